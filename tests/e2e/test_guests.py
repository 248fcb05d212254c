"""Every shipped guest, end to end, under every engine: serial output, status, exit counts."""
from __future__ import annotations

import pytest

import guests
from conftest import EXPECTED, run_guest
from vmm.observers import ExitCallback, ExitStats
from vmm.vcpu import RunState

# `sensitive` differs under trap by design (the sensitive instructions that do not trap at ring 1):
# test_sensitive.py compares it line by line against a named list instead. The VMBus guests need
# the micro hypervisor's SynIC and hypercalls: test_vmbus_guests.py runs them there.
MICRO_ONLY = "needs the micro hypervisor's VMBus; covered by test_vmbus_guests.py"
SKIPPED = {"sensitive": "differs under trap by design; covered by test_sensitive.py",
           "vmbus-block": MICRO_ONLY, "vmbus-console": MICRO_ONLY}
NAMES = [pytest.param(name, marks=pytest.mark.skip(reason=SKIPPED[name]))
         if name in SKIPPED else name for name in guests.names()]


@pytest.mark.parametrize("name", NAMES)
def test_guest_output_and_status(name, engine):
    run = run_guest(name, engine)
    assert run.result.state is RunState.EXITED, run.result.report()
    assert run.result.status == 0, run.text
    assert run.text == (EXPECTED / f"{name}.txt").read_text()


# Under the micro hypervisor every device runs in the parent partition. nano-in (100,000 forwarded
# port reads, several seconds) runs under trap only; benchmarks/micro_io.py measures it.
MICRO_CASES = [(name, engine) for name in guests.names() if name not in SKIPPED
               for engine in ("native", "trap") if (name, engine) != ("nano-in", "native")]


@pytest.mark.parametrize("name, engine", MICRO_CASES)
def test_micro_gives_the_monolithic_output_time_and_exits(name, engine):
    """Same golden output and status, same virtual time (instructions) and exit count: the
    devices' interrupts and timer deadlines cross the process boundary deterministically."""
    micro = run_guest(name, engine, hypervisor="micro")
    monolithic = run_guest(name, engine)
    assert micro.result.state is RunState.EXITED, micro.result.report()
    assert micro.text == (EXPECTED / f"{name}.txt").read_text()
    assert ((micro.result.status, micro.result.instructions, micro.result.exits)
            == (monolithic.result.status, monolithic.result.instructions,
                monolithic.result.exits))


def test_native_takes_no_exits_and_trap_takes_them():
    assert run_guest("pmode", "native").result.exits == 0
    assert run_guest("pmode", "trap").result.exits > 0


def test_each_out_of_hello_is_one_io_exit():
    """hello: 7 OUTs to set up COM1, per byte one IN of LSR and one OUT to THR, one OUT to 0xF4."""
    stats = ExitStats()
    run = run_guest("hello", "trap", observers=[stats])
    message = len(run.output)
    io = stats.samples["IO_INSTRUCTION"]
    assert len(io) == 7 + 2 * message + 1
    assert stats.details == {"EXCEPTION_NMI: cli": 1}
    assert run.result.exits == len(io) + 1


def test_exit_counts_do_not_depend_on_observers():
    """The fastpath (nobody observing) must count exactly the exits the slow path records."""
    stats = ExitStats()
    observed = run_guest("interrupts", "trap", observers=[stats])
    plain = run_guest("interrupts", "trap")
    assert plain.result.exits == observed.result.exits == sum(
        len(v) for v in stats.samples.values())
    assert plain.result.instructions == observed.result.instructions


def test_virtual_time_is_deterministic():
    first = run_guest("interrupts", "trap")
    second = run_guest("interrupts", "native")
    assert first.result.instructions == second.result.instructions


def test_scripts_observe_exits_through_a_callback():
    seen = []
    run_guest("hello", "trap", observers=[ExitCallback(lambda exit, outcome: seen.append(
        (exit.reason.name, exit.port, outcome.value)))])
    assert seen[0] == ("EXCEPTION_NMI", None, "resume")           # the CLI
    assert seen[-1] == ("IO_INSTRUCTION", 0xF4, "stop")           # the debug-exit write
    assert len(seen) == run_guest("hello", "trap").result.exits
