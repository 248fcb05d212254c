"""Guest page walks remembered per linear page, for the accesses binary translation makes inside a
run (a PUSHF translated in place writes the stack; every in-run callout re-reads its site's bytes).

A 32-bit walk (Intel SDM Vol. 3, 4.3) is a function of CR0.PG/WP, CR3, CR4.PSE/PAE/SMEP, the kind
of access, its privilege, and the PDE and PTE it reads; its only side effects are the accessed
bit of each entry and the dirty bit of the leaf on a store. So a remembered walk is reused only
when those control bits are the same and both entries, read again from guest memory, still hold
exactly the values the walk left in them (A, and D for a store, already set): walking again would
find the same frame, pass the same checks and write nothing. Any difference (another CR3, a PTE
the guest rewrote, an entry whose A or D bit it cleared) walks again, faults included.
"""
from __future__ import annotations

import struct

from emu.paging import CR0_PG, CR0_WP, CR4_PAE, CR4_PSE, CR4_SMEP, READ, WRITE, LinearMemory

_U32 = struct.Struct("<I")
CR0_BITS = CR0_PG | CR0_WP
CR4_BITS = CR4_PSE | CR4_PAE | CR4_SMEP
PAGE = 0x1000
MAX_PAGES = 256


class WalkMemo:
    """Linear -> physical through remembered, revalidated walks; an access that crosses a page
    goes through LinearMemory's walk."""

    def __init__(self, lin: LinearMemory):
        self.lin = lin
        self.cr = lin.cr
        self.mmap = lin.memory.mmap
        self.size = lin.memory.size
        # (linear page | kind << 1 | user) -> (CR0 bits, CR3, CR4 bits, PDE address, PDE,
        # leaf address, leaf, frame); a 4 MiB page's leaf is its PDE
        self._walks: dict[int, tuple] = {}
        self.walked = 0

    def physical(self, linear: int, kind: int, user: bool) -> int:
        """The physical address of ``linear`` for one access of ``kind`` (READ or WRITE).
        Raises the walk's Fault or BusError."""
        cr = self.cr
        cr0 = cr[0]
        if not cr0 & CR0_PG:
            return linear
        known = self._walks.get(linear & ~(PAGE - 1) | kind << 1 | user)
        if (known is not None and known[0] == cr0 & CR0_BITS and known[1] == cr[3]
                and known[2] == cr[4] & CR4_BITS
                and _U32.unpack_from(self.mmap, known[3])[0] == known[4]
                and _U32.unpack_from(self.mmap, known[5])[0] == known[6]):
            return known[7] | (linear & (PAGE - 1))
        return self._walk(linear, kind, user)

    def _walk(self, linear: int, kind: int, user: bool) -> int:
        cr, mmap = self.cr, self.mmap
        walk = self.lin.walker.walk(linear, kind, user)
        self.walked += 1
        if len(self._walks) >= MAX_PAGES:
            self._walks.clear()
        leaf_addr = walk.pde_addr if walk.pte_addr is None else walk.pte_addr
        self._walks[linear & ~(PAGE - 1) | kind << 1 | user] = (
            cr[0] & CR0_BITS, cr[3], cr[4] & CR4_BITS,
            walk.pde_addr, _U32.unpack_from(mmap, walk.pde_addr)[0],
            leaf_addr, _U32.unpack_from(mmap, leaf_addr)[0], walk.frame)
        return walk.frame | (linear & (PAGE - 1))

    def read(self, linear: int, length: int, user: bool = False) -> bytes:
        """Bytes at a linear address, as LinearMemory.read reads them."""
        if (linear & (PAGE - 1)) + length > PAGE:
            return self.lin.read(linear, length, user)
        physical = self.physical(linear, READ, user)
        if physical + length > self.size:
            return self.lin.read(linear, length, user)
        return self.mmap[physical:physical + length]

    def write(self, linear: int, data: bytes, user: bool = False) -> None:
        """Store at a linear address, as LinearMemory.write stores (all checks first)."""
        length = len(data)
        if (linear & (PAGE - 1)) + length > PAGE:
            self.lin.write(linear, data, user)
            return
        physical = self.physical(linear, WRITE, user)
        if physical + length > self.size:
            self.lin.write(linear, data, user)
            return
        self.mmap[physical:physical + length] = data
