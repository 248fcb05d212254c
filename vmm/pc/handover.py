"""The CPU state a PC firmware leaves when it hands over to a guest: real mode at a boot sector
(IBM PC BIOS convention) or 32-bit flat protected mode (Multiboot 0.6.96, section 3.2).

The loaders in this package only write guest memory; they describe the register state the guest
must start in as a ``HandOver``, which the boot path applies to the vCPU (``HandOver.apply`` does
it for an ``emu.cpu.Cpu``). ``BootError`` is the one exception type every loader raises.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from emu.cpu import (CS, DS, EAX, EBP, EBX, ECX, EDI, EDX, ES, ESI, ESP, FS, GS, SS, DESC_B,
                     DESC_DPL_SHIFT, DESC_G, DESC_P, DESC_S, DESC_TYPE_SHIFT)

CR0_PE = 1 << 0
CR0_ET = 1 << 4
EFLAGS_RESERVED = 1 << 1

_SEGS = {"cs": CS, "ds": DS, "es": ES, "fs": FS, "gs": GS, "ss": SS}
_GPRS = {"eax": EAX, "ecx": ECX, "edx": EDX, "ebx": EBX, "esp": ESP, "ebp": EBP, "esi": ESI,
         "edi": EDI}


class BootError(ValueError):
    """A guest image cannot be booted; the message (one line) says which file and why."""


@dataclass(frozen=True)
class Segment:
    """A segment register's hidden part. ``flags`` is in QEMU's descriptor-cache form (the
    descriptor's high dword & 0x00F0FF00), as ``emu.cpu.Cpu.load_segment`` takes it."""
    selector: int
    base: int
    limit: int
    flags: int

    @classmethod
    def real(cls, selector: int, code: bool = False) -> "Segment":
        """A real-mode load: base = selector * 16, 64 KiB limit, present read/write data (or
        execute/read code)."""
        flags = DESC_P | DESC_S | ((0xB if code else 0x2) << DESC_TYPE_SHIFT)
        return cls(selector, selector << 4, 0xFFFF, flags)

    @classmethod
    def flat32(cls, selector: int, code: bool) -> "Segment":
        """A 32-bit ring-0 segment with base 0 and a 4 GiB limit (granularity 4 KiB)."""
        seg_type = 0xB if code else 0x3  # execute/read accessed, read/write accessed
        flags = DESC_P | DESC_S | DESC_B | DESC_G | (seg_type << DESC_TYPE_SHIFT) | (0 << DESC_DPL_SHIFT)
        return cls(selector, 0, 0xFFFFFFFF, flags)

    def descriptor(self) -> bytes:
        """The 8-byte GDT entry that loads as this segment."""
        limit = self.limit >> 12 if self.flags & DESC_G else self.limit
        lo = (limit & 0xFFFF) | ((self.base & 0xFFFF) << 16)
        hi = (((self.base >> 16) & 0xFF) | (self.flags & 0x00F0FF00) | (limit & 0xF0000)
              | (self.base & 0xFF000000))
        return lo.to_bytes(4, "little") + hi.to_bytes(4, "little")


@dataclass
class HandOver:
    """The state the guest starts in. Registers not listed in ``registers`` are 0.

    mode       "real" (CR0.PE = 0) or "protected" (CR0.PE = 1, paging off)
    eip        the entry point (an offset in CS; CS.base is 0 on both paths)
    registers  lower-case GPR names (eax, ebx, edx, esp, ...) to values
    segments   "cs", "ds", "es", "fs", "gs", "ss" to their hidden state
    cr0, eflags, gdtr/idtr = (base, limit); a20 is always on (the platform has no A20 gate)
    notes      what the loader did that a log might show (one line each)
    """
    mode: str
    eip: int
    registers: dict[str, int]
    segments: dict[str, Segment]
    cr0: int
    eflags: int = EFLAGS_RESERVED
    gdtr: tuple[int, int] = (0, 0xFFFF)
    idtr: tuple[int, int] = (0, 0x3FF)
    a20: bool = True
    notes: list[str] = field(default_factory=list)

    def apply(self, cpu) -> None:
        """Put an ``emu.cpu.Cpu`` in this state (all other GPRs zeroed; CR3/CR4 untouched, so
        call it on a CPU fresh from ``reset_real_mode``). Engines that virtualize the privileged
        state may instead read the fields and load them their own way."""
        cpu.write_cr(0, self.cr0)
        cpu.set_table("gdtr", *self.gdtr)
        cpu.set_table("idtr", *self.idtr)
        for name, seg in self.segments.items():
            cpu.load_segment(_SEGS[name], seg.selector, seg.base, seg.limit, seg.flags)
        for name, index in _GPRS.items():
            cpu.gpr[index] = self.registers.get(name, 0) & 0xFFFFFFFF
        cpu.eflags = self.eflags
        cpu.eip = self.eip


def real_mode_handover(entry: int, *, edx: int, esp: int, notes: list[str] | None = None) -> HandOver:
    """A BIOS's hand-over to a boot sector: real mode, all segments 0, CS:IP = 0000:entry."""
    segments = {name: Segment.real(0, code=(name == "cs")) for name in _SEGS}
    return HandOver("real", entry, {"edx": edx, "esp": esp}, segments, CR0_ET,
                    notes=list(notes or ()))


def write_zeros(memory, addr: int, length: int, chunk: int = 1 << 20) -> None:
    """Zero ``length`` bytes at ``addr`` a MiB at a time (a kernel's bss can be tens of MiB)."""
    zeros = bytes(min(chunk, length))
    while length > 0:
        n = min(chunk, length)
        memory.write(addr, zeros[:n])
        addr += n
        length -= n


def check_in_ram(memory, addr: int, length: int, what: str) -> None:
    if addr < 0 or addr + length > memory.size:
        raise BootError(f"{what} ({addr:#x}-{addr + length:#x}) does not fit in "
                        f"{memory.size >> 20} MiB of guest RAM")
