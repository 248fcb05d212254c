"""emu.cpu on real guest code: what the CPU reports to its handler and its MMU (TLB fills and
refusals, run errors, exceptions raised by hooks), the instruction counter and halted flag found
in QEMU's state, translation flushes after host writes, and MSR access."""
from __future__ import annotations

import pytest

from emu.cpu import (CS, DS, EAX, ES, SS, Cpu, DESC_B, DESC_G, DESC_P, DESC_S, DESC_TYPE_SHIFT,
                     describe_run_error)
from emu.memory import GuestMemory
from emu.tlb import FILL_FETCH, FILL_READ, FILL_WRITE, PROT_ALL

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


@pytest.mark.parametrize("code, eip, access", [
    ("a1 04 00 20 00", CODE, FILL_READ),         # mov eax, [OUTSIDE + 4]
    ("a3 04 00 20 00", CODE, FILL_WRITE),        # mov [OUTSIDE + 4], eax
    ("", OUTSIDE + 4, FILL_FETCH),               # execute at OUTSIDE + 4
])
def test_a_refused_tlb_fill_ends_the_run_with_the_full_address(machine, code, eip, access):
    """The MMU sees the page and the access kind; refusing ends the run, and the CPU tells the
    full address (uc->invalid_addr, located by probing)."""
    memory, cpu, handler = machine
    fills = []

    def fill(page, kind):
        fills.append((page, kind))
        return (page, PROT_ALL) if page < memory.size else None
    cpu.set_mmu(fill)
    err = run_code(memory, cpu, bytes.fromhex(code) + b"\xf4", eip)
    assert fills[-1] == (OUTSIDE, access)
    assert cpu.tlb.refused_address() == OUTSIDE + 4
    assert describe_run_error(err) == "an unhandled CPU exception"
    assert cpu.eip == eip  # the CPU stands at the instruction that made the access


def test_without_an_mmu_linear_is_physical_and_nothing_else_is_mapped(machine):
    memory, cpu, handler = machine
    err = run_code(memory, cpu, bytes.fromhex("a1 00 00 20 00 f4"))
    assert describe_run_error(err) == "an unhandled CPU exception"
    assert cpu.tlb.refused_address() == OUTSIDE


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
