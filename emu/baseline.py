"""The bare machine as a benchmark baseline: a flat boot image run on stock Unicorn, with no VMM,
no trapvisor `Cpu` and no hook on the hot path, in either of Unicorn's TLB modes.

What it models is the physical CPU alone, booting a sector as a BIOS would leave it (real mode,
CS:IP = 0:origin) and running until the guest writes its status to the debug-exit port (0xF4) and
halts, as QEMU's isa-debug-exit ends the same image. The TLB modes (unicorn/unicorn.h,
`uc_tlb_type`):

- ``cpu`` (UC_TLB_CPU, the default): QEMU's own x86 page walker fills the TLB. Unicorn 2.1 stubs
  the dirty-memory bitmap, so every RAM TLB entry keeps TLB_NOTDIRTY and every guest store takes
  the notdirty slow path (shared/notes/unicorn-x86.md, "Guest stores and the virtual TLB").
- ``virtual-split`` (UC_TLB_VIRTUAL with a UC_HOOK_TLB_FILL callback): the callback maps each
  linear page to the same physical page (paging stays off in the images run here) and grants per
  access: READ|EXEC on a fetch, READ|WRITE on a data access, so a data entry has no execute
  permission and QEMU drops TLB_NOTDIRTY from it after the first store. The callback runs only on
  a TLB miss; the fills are counted.

Only `uc.emu_start` is timed; mapping memory and installing hooks are not. The benchmarks reach
Unicorn only through this module (import contract: only emu/ imports unicorn).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from unicorn import (UC_ARCH_X86, UC_HOOK_INSN, UC_HOOK_TLB_FILL, UC_MEM_FETCH, UC_MODE_16,
                     UC_PROT_ALL, UC_PROT_EXEC, UC_PROT_READ, UC_PROT_WRITE, UC_TLB_VIRTUAL, Uc,
                     UcError)
from unicorn.x86_const import UC_X86_INS_OUT, UC_X86_REG_EIP

TLB_MODES = ("cpu", "virtual-split")
DEBUG_EXIT = 0xF4
PAGE_MASK = ~0xFFF
NO_UNTIL = 1 << 40        # an end address no 32-bit guest reaches: run until HLT


class BaselineError(RuntimeError):
    """The image did not run to its debug-exit write on the bare CPU."""


@dataclass
class BaselineRun:
    """One timed run: wall seconds of emu_start, the status written to port 0xF4, TLB fills."""
    seconds: float
    status: int
    fills: int


class _Machine:
    """A stock Unicorn x86 CPU with RAM at 0, the image loaded and the exit port watched."""

    def __init__(self, code: bytes, origin: int, ram_size: int, tlb: str):
        if tlb not in TLB_MODES:
            raise ValueError(f"unknown TLB mode {tlb!r}; choose from {', '.join(TLB_MODES)}")
        self.uc = Uc(UC_ARCH_X86, UC_MODE_16)
        self.uc.mem_map(0, ram_size, UC_PROT_ALL)
        self.uc.mem_write(origin, code)
        self.status: int | None = None
        self.fills = 0
        self.uc.hook_add(UC_HOOK_INSN, self._on_out, aux1=UC_X86_INS_OUT)
        if tlb == "virtual-split":
            self.uc.ctl_set_tlb_mode(UC_TLB_VIRTUAL)
            self.uc.hook_add(UC_HOOK_TLB_FILL, self._fill)

    def _on_out(self, uc, port: int, size: int, value: int, user_data) -> None:
        if port == DEBUG_EXIT:
            self.status = value & 0xFF

    def _fill(self, uc, address: int, access: int, entry, user_data) -> bool:
        self.fills += 1
        entry.paddr = address & PAGE_MASK
        entry.perms = (UC_PROT_READ | UC_PROT_EXEC if access == UC_MEM_FETCH
                       else UC_PROT_READ | UC_PROT_WRITE)
        return True


def run_flat_image(code: bytes, origin: int, ram_size: int, tlb: str = "cpu") -> BaselineRun:
    """Boot ``code`` at ``origin`` in real mode on bare Unicorn and time it until the guest halts
    after writing its status to port 0xF4."""
    machine = _Machine(code, origin, ram_size, tlb)
    try:
        started = time.perf_counter()
        machine.uc.emu_start(origin, NO_UNTIL)
        seconds = time.perf_counter() - started
    except UcError as exc:
        raise BaselineError(f"bare Unicorn ({tlb} TLB) stopped with {exc} at "
                            f"{machine.uc.reg_read(UC_X86_REG_EIP):#x}") from exc
    if machine.status is None:
        raise BaselineError(f"bare Unicorn ({tlb} TLB): the image halted without writing its "
                            f"status to port {DEBUG_EXIT:#x}")
    return BaselineRun(seconds, machine.status, machine.fills)
