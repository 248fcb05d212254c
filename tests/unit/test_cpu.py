"""emu.cpu on real guest code: what the CPU reports to its handler (access kinds of unmapped
accesses, run errors, exceptions raised by hooks), the instruction counter and halted flag found
in QEMU's state, translation flushes after host writes, and MSR access."""
from __future__ import annotations

import pytest

from emu.cpu import (CS, DS, EAX, ES, SS, Cpu, DESC_B, DESC_G, DESC_P, DESC_S, DESC_TYPE_SHIFT,
                     describe_run_error)
from emu.memory import Access, GuestMemory

CODE, OUTSIDE = 0x1000, 0x200000  # RAM is 1 MiB: OUTSIDE has nothing behind it
FLAT = DESC_P | DESC_S | DESC_B | DESC_G


class Recorder:
    """A CpuHandler that records what the CPU reports and lets nothing through."""

    def __init__(self):
        self.events = []

    def on_interrupt(self, intno: int) -> None:
        self.events.append(("interrupt", intno))

    def on_in(self, port: int, size: int) -> int:
        return 0

    def on_out(self, port: int, size: int, value: int) -> None:
        raise RuntimeError(f"out {port:#x}")

    def on_cpuid(self) -> bool:
        return False

    def on_invalid_opcode(self) -> bool:
        self.events.append(("invalid",))
        return False

    def on_unmapped(self, access: Access, address: int, size: int, value: int) -> bool:
        self.events.append((access, address, size))
        return False


@pytest.fixture
def machine():
    """A flat 32-bit protected-mode CPU over 1 MiB of RAM, with a Recorder attached."""
    memory = GuestMemory(1 << 20)
    cpu = Cpu(memory)
    handler = Recorder()
    cpu.attach(handler)
    cpu.write_cr(0, 0x11)
    cpu.load_segment(CS, 0x08, 0, 0xFFFFFFFF, FLAT | (0xB << DESC_TYPE_SHIFT))
    for seg in (DS, ES, SS):
        cpu.load_segment(seg, 0x10, 0, 0xFFFFFFFF, FLAT | (0x3 << DESC_TYPE_SHIFT))
    yield memory, cpu, handler
    cpu.close()


def run_code(memory, cpu, code: bytes, eip: int = CODE, count: int = 100) -> int:
    memory.write(CODE, code)
    cpu.flush_translations()
    cpu.eip = eip
    return cpu.run(count)


@pytest.mark.parametrize("code, eip, access, error", [
    ("a1 00 00 20 00", CODE, Access.READ, "read from unmapped memory"),      # mov eax, [OUTSIDE]
    ("a3 00 00 20 00", CODE, Access.WRITE, "write to unmapped memory"),      # mov [OUTSIDE], eax
    ("", OUTSIDE, Access.FETCH, "fetch from unmapped memory"),               # execute at OUTSIDE
])
def test_unmapped_access_kind_and_run_error(machine, code, eip, access, error):
    memory, cpu, handler = machine
    err = run_code(memory, cpu, bytes.fromhex(code) + b"\xf4", eip)
    assert handler.events[0][:2] == (access, OUTSIDE)
    assert describe_run_error(err) == error


def test_invalid_instruction_run_error(machine):
    memory, cpu, handler = machine
    err = run_code(memory, cpu, bytes.fromhex("ff ff"))
    assert handler.events == [("invalid",)]
    assert describe_run_error(err) == "an invalid instruction"


def test_unlisted_run_error_names_unicorns_code():
    assert describe_run_error(12) == ("Unicorn error 12 (Write to write-protected memory "
                                      "(UC_ERR_WRITE_PROT))")


def test_exception_in_a_hook_stops_the_run_and_is_kept(machine):
    memory, cpu, _ = machine
    run_code(memory, cpu, bytes.fromhex("e6 80 40 f4"))  # out 0x80, al; inc eax; hlt
    assert isinstance(cpu.hook_error, RuntimeError) and str(cpu.hook_error) == "out 0x80"
    assert cpu.gpr[EAX] == 0


def test_counted_run_to_hlt(machine):
    memory, cpu, _ = machine
    assert run_code(memory, cpu, bytes.fromhex("40 40 40 f4")) == 0  # inc eax x 3; hlt
    assert cpu.halted and cpu.gpr[EAX] == 3
    assert cpu.executed() == 4
    assert cpu.eip == CODE + 4


def test_host_written_code_runs_after_flush_translations(machine):
    memory, cpu, _ = machine
    run_code(memory, cpu, bytes.fromhex("b8 01 00 00 00 f4"))  # mov eax, 1; hlt
    run_code(memory, cpu, bytes.fromhex("b8 02 00 00 00 f4"))  # rewritten, then flushed
    assert cpu.gpr[EAX] == 2


def test_msr_round_trip(machine):
    _, cpu, _ = machine
    cpu.msr_write(0x174, 0x1234)  # IA32_SYSENTER_CS
    assert cpu.msr_read(0x174) == 0x1234
