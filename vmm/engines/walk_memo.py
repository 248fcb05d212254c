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

from emu.paging import CR0_PG, CR0_WP, CR4_PAE, CR4_PSE, CR4_SMEP, LinearMemory, READ, WRITE

_U32 = struct.Struct("<I")
CR0_BITS = CR0_PG | CR0_WP
CR4_BITS = CR4_PSE | CR4_PAE | CR4_SMEP
PAGE = 0x1000
MAX_PAGES = 256


class WalkMemo:
    """Linear -> physical for single-page accesses, through remembered, revalidated walks."""

    def __init__(self, lin: LinearMemory):
        self.lin = lin
        self.cr = lin.cr
        self.mmap = lin.memory.mmap
        self._walks: dict[tuple[int, int, bool], tuple] = {}
        self.reused = 0
        self.walked = 0

    def physical(self, linear: int, kind: int, user: bool) -> int:
        """The physical address of ``linear`` for one access of ``kind`` (READ or WRITE) that
        stays within its page. Raises the walk's Fault or BusError."""
        cr = self.cr
        if not cr[0] & CR0_PG:
            return linear
        page = linear & ~(PAGE - 1)
        key = (page, kind, user)
        context = (cr[0] & CR0_BITS, cr[3], cr[4] & CR4_BITS)
        known = self._walks.get(key)
        if known is not None and known[0] == context and self._unchanged(known):
            self.reused += 1
            return known[5] | (linear & (PAGE - 1))
        walk = self.lin.walker.walk(linear, kind, user)
        self.walked += 1
        if len(self._walks) >= MAX_PAGES:
            self._walks.clear()
        unpack = _U32.unpack_from
        pte = None if walk.pte_addr is None else unpack(self.mmap, walk.pte_addr)[0]
        self._walks[key] = (context, walk.pde_addr, unpack(self.mmap, walk.pde_addr)[0],
                            walk.pte_addr, pte, walk.frame)
        return walk.frame | (linear & (PAGE - 1))

    def _unchanged(self, known: tuple) -> bool:
        _, pde_addr, pde, pte_addr, pte, _ = known
        unpack = _U32.unpack_from
        return (unpack(self.mmap, pde_addr)[0] == pde
                and (pte_addr is None or unpack(self.mmap, pte_addr)[0] == pte))

    def read(self, linear: int, length: int, user: bool = False) -> bytes:
        """Bytes at a linear address as LinearMemory.read reads them (one page at most)."""
        physical = self.physical(linear, READ, user)
        if physical + length > len(self.mmap):
            return self.lin.read(linear, length, user)
        return self.mmap[physical:physical + length]

    def write(self, linear: int, data: bytes, user: bool = False) -> None:
        """Store at a linear address as LinearMemory.write stores (one page at most)."""
        physical = self.physical(linear, WRITE, user)
        if physical + len(data) > len(self.mmap):
            self.lin.write(linear, data, user)
            return
        self.mmap[physical:physical + len(data)] = data

    @staticmethod
    def within_page(linear: int, length: int) -> bool:
        return (linear & (PAGE - 1)) + length <= PAGE
