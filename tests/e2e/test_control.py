"""Execution control (vmm/debug/debuggee.py): breakpoints, watchpoints, exit breakpoints, stepping and
deterministic replay, on real guests under both engines."""
from __future__ import annotations

import pytest

import guests
from conftest import run_guest
from emu.asm import assemble_file
from hypervisors.images import resolve
from hypervisors.monolithic import MonolithicHypervisor
from vmm.debug.debuggee import Debuggee, ExitFilter, StopKind
from vmm.observers import ExitCallback
from vmm.vmcs import ExitReason


def debuggee(name: str, engine: str, output: list | None = None) -> Debuggee:
    sink = output.append if output is not None else (lambda data: None)
    return Debuggee(lambda observers: MonolithicHypervisor(engine=engine, sink=sink,
                                                            observers=observers),
                    resolve(name, 32 << 20))


def test_stops_at_the_entry_and_steps(engine):
    d = debuggee("hello", engine)
    assert d.stop.kind is StopKind.ENTRY and d.cpu.eip == 0x7C00
    assert d.stepi(3).kind is StopKind.STEP
    assert d.cpu.eip == 0x7C05          # cli; xor ax, ax; mov ds, ax


def test_breakpoint_stops_before_the_instruction_every_time(engine):
    wait = assemble_file(guests.path("hello")).symbols["start.wait"]
    d = debuggee("hello", engine)
    bp = d.add_breakpoint(wait)
    for _ in range(3):
        stop = d.cont()
        assert (stop.kind, stop.breakpoint, d.cpu.linear_pc()) == (StopKind.BREAKPOINT, bp, wait)
    assert d.stepi().kind is StopKind.STEP and d.cpu.linear_pc() == wait + 1  # in al, dx


def test_exit_breakpoint_stops_right_after_the_handled_exit():
    output: list[bytes] = []
    d = debuggee("hello", "trap", output)
    d.add_exit_breakpoint(ExitFilter(ExitReason.IO_INSTRUCTION, port=0x3F8))
    d.cont()                                            # the divisor-latch write
    stop = d.cont()
    assert stop.kind is StopKind.EXIT and stop.exit.reason is ExitReason.IO_INSTRUCTION
    assert (stop.exit.port, stop.exit.value, stop.exit.is_in) == (0x3F8, ord("H"), False)
    assert b"".join(output) == b"H"                     # nothing after the OUT has run yet


def test_watchpoint_reports_old_and_new_values():
    ticks = assemble_file(guests.path("usermode")).symbols["ticks"]
    d = debuggee("usermode", "trap")
    d.add_watchpoint(ticks, 4)
    for n in range(1, 4):
        stop = d.cont()
        assert stop.kind is StopKind.WATCHPOINT
        assert (int.from_bytes(stop.old, "little"), int.from_bytes(stop.new, "little")) == (n - 1, n)
    d.delete()
    assert d.cont().kind is StopKind.ENDED and d.ended.status == 0


def test_goto_exit_replays_the_same_exits():
    d = debuggee("interrupts", "trap")
    d.add_exit_breakpoint(ExitFilter(ExitReason.HLT))
    for _ in range(5):
        d.cont()
    first = [(e.reason, e.rip, e.qualification) for e in d.history]
    stop = d.goto_exit(len(first) // 2)
    assert stop.kind is StopKind.EXIT and d.exit_number == len(first) // 2
    assert [(e.reason, e.rip, e.qualification) for e in d.history] == first[:len(first) // 2]
    back = d.reverse_exit()
    assert back.exit_number == len(first) // 2 - 1


def test_the_end_is_a_stop_and_the_state_stays_readable():
    d = debuggee("pmode", "native")
    stop = d.cont()
    assert stop.kind is StopKind.ENDED and stop.result.status == 0
    assert d.cont() is stop
    assert d.read_virtual(0x7C00, 1) == d.read_physical(0x7C00, 1)


def test_unmapped_watchpoint_is_refused():
    d = debuggee("hello", "native")
    with pytest.raises(ValueError, match="not RAM"):
        d.add_watchpoint(0xF000_0000, 4)


@pytest.mark.parametrize("name", ["interrupts", "usermode"])
def test_two_runs_take_the_same_exits(name):
    """Deterministic replay: virtual time from executed instructions, the same exit sequence."""
    def exits() -> list:
        seen = []
        run_guest(name, "trap", observers=[ExitCallback(lambda exit, outcome: seen.append(
            (exit.reason, exit.rip, exit.qualification, exit.port, exit.value)))])
        return seen

    first = exits()
    assert len(first) > 100 and exits() == first
