"""Segment descriptors as the x86 defines them (Intel SDM Vol. 3, 3.4.5): parsing GDT/LDT entries.

A ``Descriptor`` is the decoded 8-byte entry; ``flags`` is kept in the form QEMU's segment caches
use (the descriptor's high dword masked with 0x00F0FF00), so it can be loaded into the CPU as is.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

from emu.cpu import DESC_B, DESC_DPL_SHIFT, DESC_G, DESC_P, DESC_S, DESC_TYPE_SHIFT
from emu.paging import Fault, LinearMemory

GP, NP, SS_FAULT, TS = 13, 11, 12, 10
TYPE_CODE = 0x8
TYPE_CONFORMING = 0x4
TYPE_READABLE_OR_WRITABLE = 0x2
TYPE_ACCESSED = 0x1


@dataclass(frozen=True)
class Descriptor:
    """One decoded segment or system descriptor."""
    raw: int
    base: int
    limit: int
    flags: int

    @classmethod
    def decode(cls, raw: int) -> "Descriptor":
        lo, hi = raw & 0xFFFFFFFF, raw >> 32
        base = (lo >> 16) | ((hi & 0xFF) << 16) | (hi & 0xFF000000)
        limit = (lo & 0xFFFF) | (hi & 0xF0000)
        if hi & DESC_G:
            limit = (limit << 12) | 0xFFF
        return cls(raw, base, limit, hi & 0x00F0FF00)

    @property
    def dpl(self) -> int:
        return (self.flags >> DESC_DPL_SHIFT) & 3

    @property
    def present(self) -> bool:
        return bool(self.flags & DESC_P)

    @property
    def system(self) -> bool:
        return not self.flags & DESC_S

    @property
    def type(self) -> int:
        return (self.flags >> DESC_TYPE_SHIFT) & 0xF

    @property
    def is_code(self) -> bool:
        return not self.system and bool(self.type & TYPE_CODE)

    @property
    def is_writable_data(self) -> bool:
        return not self.system and not self.type & TYPE_CODE and bool(
            self.type & TYPE_READABLE_OR_WRITABLE)

    @property
    def conforming(self) -> bool:
        return self.is_code and bool(self.type & TYPE_CONFORMING)

    @property
    def big(self) -> bool:
        return bool(self.flags & DESC_B)

    def with_dpl(self, dpl: int) -> int:
        """The cache flags with the DPL replaced (ring compression)."""
        return (self.flags & ~(3 << DESC_DPL_SHIFT)) | (dpl << DESC_DPL_SHIFT)


class DescriptorTables:
    """Reads descriptors through GDTR/LDTR as the CPU would, raising the architectural faults."""

    def __init__(self, lin: LinearMemory):
        self.lin = lin

    def entry_address(self, selector: int, gdtr: tuple[int, int], ldtr: tuple[int, int],
                      vector: int = GP, ext: int = 0) -> int:
        base, limit = ldtr if selector & 4 else gdtr
        index = selector & 0xFFF8
        if index + 7 > limit:
            raise Fault(vector, (selector & 0xFFFC) | ext)
        return base + index

    def read(self, selector: int, gdtr, ldtr, vector: int = GP, ext: int = 0) -> Descriptor:
        """The descriptor, read as the CPU reads it: low dword, then high dword."""
        addr = self.entry_address(selector, gdtr, ldtr, vector, ext)
        low = struct.unpack("<I", self.lin.read(addr, 4))[0]
        high = struct.unpack("<I", self.lin.read(addr + 4, 4))[0]
        return Descriptor.decode(high << 32 | low)

    def set_bits(self, selector: int, gdtr, ldtr, type_bits: int) -> None:
        """Set type bits (accessed, TSS busy) in the descriptor in memory, as a segment load does."""
        addr = self.entry_address(selector, gdtr, ldtr) + 5
        access = self.lin.read(addr, 1)[0]
        if access & type_bits != type_bits:
            self.lin.write(addr, bytes([access | type_bits]))


def pushed_esp(esp: int, frame_bytes: int, stack_bits: int) -> tuple[int, int]:
    """(ESP after pushing frame_bytes, the frame's offset in the stack segment): a 16-bit stack
    moves SP only, ESP's high half stays."""
    new_esp = (esp - frame_bytes) & 0xFFFFFFFF
    if stack_bits == 16:
        new_esp = (esp & 0xFFFF0000) | (new_esp & 0xFFFF)
        return new_esp, new_esp & 0xFFFF
    return new_esp, new_esp
