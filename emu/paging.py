"""32-bit paging as the CPU's MMU performs it (Intel SDM Vol. 3, 4.3, 4.6, 4.7, 4.8): the page
walk, in Python, that is both the VMM's view of guest linear memory and the hardware walk behind
every TLB fill.

What applies to this CPU (no PAE: CR4.PAE is refused): 4 KiB pages and, with CR4.PSE, 4 MiB
pages; the accessed bit of every entry used and the dirty bit of the leaf on a store; U/S against
the access's privilege; R/W for user accesses always and for supervisor ones under CR0.WP; SMEP
(CR4.SMEP, which the CPU model offers: a supervisor fetch from a user page faults). There is no
execute-disable bit in 32-bit paging (IA32_EFER.NXE acts only on PAE and 4-level entries), so
every readable page is executable; the I/D bit of the error code is set only under SMEP, as the
SDM gives it for 32-bit paging. A 4 MiB page's reserved bit 21 faults with RSVD; its PSE-36
bits name physical addresses above 4 GiB (no RAM: the MMU refuses them as unbacked).
Faults are architectural: a ``Fault`` carrying #PF with the SDM error code and CR2.
"""
from __future__ import annotations

import struct
from typing import NamedTuple

from emu.memory import GuestMemory

PG_P, PG_RW, PG_US, PG_A, PG_D, PG_PS, PG_G = 1, 2, 4, 0x20, 0x40, 0x80, 0x100
CR0_PE, CR0_WP, CR0_PG = 1, 1 << 16, 1 << 31
CR4_PSE, CR4_PAE, CR4_PGE, CR4_SMEP = 1 << 4, 1 << 5, 1 << 7, 1 << 20

PF_P, PF_W, PF_U, PF_RSVD, PF_I = 1, 2, 4, 8, 0x10
# A 4 MiB PDE (SDM Table 4-4): bits 20:13 are physical-address bits 39:32 (PSE-36; none of them
# is RAM here), bit 21 is reserved at every MAXPHYADDR up to 40.
PDE_4M_HIGH, PDE_4M_RESERVED = 0x1FE000, 0x200000
PF = 14
READ, WRITE, FETCH = 0, 1, 2  # the kinds of access a walk checks

_U32 = struct.Struct("<I")


class Fault(Exception):
    """An architectural exception raised while emulating: vector, error code, CR2 for #PF."""

    def __init__(self, vector: int, error_code: int | None = None, cr2: int | None = None):
        super().__init__(vector, error_code, cr2)
        self.vector = vector
        self.error_code = error_code
        self.cr2 = cr2


class BusError(Exception):
    """A linear access reached a guest-physical address with no RAM behind it (``length``
    bytes, a write or a read: a page-table walk, a descriptor, an event's stack frame...)."""

    def __init__(self, physical: int, length: int = 1, write: bool = False):
        super().__init__(f"guest-physical address {physical:#x} has no RAM")
        self.physical = physical
        self.length = length
        self.write = write


class Translation(NamedTuple):
    """What a walk found for one linear address."""
    frame: int          # physical address of its 4 KiB frame
    writable: bool      # a store at the same privilege would pass the R/W checks
    dirty: bool         # the leaf entry's D bit (after this access set it)
    user: bool          # U/S is set at every level
    pde_addr: int       # physical addresses of the entries used (the leaf is the last)
    pte_addr: int | None


class PageWalker:
    """The guest's page tables, walked as the MMU walks them, from the live control registers."""

    def __init__(self, memory: GuestMemory, cr):
        self.memory = memory
        self.cr = cr  # live control registers: cr[0], cr[3], cr[4]

    def walk(self, linear: int, kind: int = READ, user: bool = False,
             touch: bool = True) -> Translation:
        """Translate a paging-on linear address; ``touch=False`` leaves A/D bits alone (a
        debugger looking, not the CPU accessing). Raises Fault(#PF) or BusError."""
        walk = self.translate(linear, kind, user, touch)
        if type(walk) is int:
            raise Fault(PF, walk, linear)
        return walk

    def translate(self, linear: int, kind: int = READ, user: bool = False,
                  touch: bool = True) -> Translation | int:
        """``walk`` without the exception: the Translation, or the #PF error code (the TLB
        fill's hot path, where a fault is no exceptional case). Raises BusError."""
        cr = self.cr
        cr4 = cr[4]
        if cr4 & CR4_PAE:
            raise Fault(13, 0)  # PAE paging is not modelled; refuse rather than mistranslate
        write = kind == WRITE
        err = (PF_W if write else 0) | (PF_U if user else 0)
        if kind == FETCH and cr4 & CR4_SMEP:
            err |= PF_I
        mmap, size = self.memory.mmap, self.memory.size
        pde_addr = (cr[3] & 0xFFFFF000) | ((linear >> 20) & 0xFFC)
        if pde_addr + 4 > size:
            raise BusError(pde_addr, 4)
        pde = _U32.unpack_from(mmap, pde_addr)[0]
        if not pde & PG_P:
            return err
        if pde & PG_PS and cr4 & CR4_PSE:
            if pde & PDE_4M_RESERVED:
                return err | PF_P | PF_RSVD
            pte_addr, leaf = None, pde
            frame = (pde & 0xFFC00000) | ((pde & PDE_4M_HIGH) << 19) | (linear & 0x3FF000)
        else:
            pte_addr = (pde & 0xFFFFF000) | ((linear >> 10) & 0xFFC)
            if pte_addr + 4 > size:
                raise BusError(pte_addr, 4)
            leaf = _U32.unpack_from(mmap, pte_addr)[0]
            if not leaf & PG_P:
                return err
            frame = leaf & 0xFFFFF000
        writable = self._check(pde & leaf, kind, user)
        if writable is None:
            return err | PF_P
        if touch:
            if pte_addr is not None and not pde & PG_A:
                _U32.pack_into(mmap, pde_addr, pde | PG_A)
            new = leaf | (PG_A | PG_D if write else PG_A)
            if new != leaf:
                _U32.pack_into(mmap, pte_addr if pte_addr is not None else pde_addr, new)
                leaf = new
        return Translation(frame, writable, bool(leaf & PG_D), bool(pde & leaf & PG_US),
                           pde_addr, pte_addr)

    def _check(self, both: int, kind: int, user: bool) -> bool | None:
        """The privilege checks of SDM 4.6 on the combined U/S and R/W bits: None if the access
        fails them, else whether a store would pass them too."""
        if user:
            if not both & PG_US:
                return None
            writable = bool(both & PG_RW)
        else:
            if kind == FETCH and both & PG_US and self.cr[4] & CR4_SMEP:
                return None
            writable = bool(both & PG_RW) or not self.cr[0] & CR0_WP
        if kind == WRITE and not writable:
            return None
        return writable


class LinearMemory:
    """Reads and writes guest memory by linear address through the guest's current page tables."""

    def __init__(self, memory: GuestMemory, cr):
        self.memory = memory
        self.cr = cr
        self.walker = PageWalker(memory, cr)

    def translate(self, linear: int, write: bool = False, user: bool = False,
                  fetch: bool = False, touch: bool = True) -> int:
        """Linear -> physical as the MMU does it (identity while CR0.PG is clear)."""
        linear &= 0xFFFFFFFF
        if not self.cr[0] & CR0_PG:
            return linear
        kind = FETCH if fetch else WRITE if write else READ
        return self.walker.walk(linear, kind, user, touch).frame | (linear & 0xFFF)

    def _spans(self, linear: int, length: int, write: bool, user: bool, touch: bool = True):
        """Split an access at page boundaries into (physical, length) pieces."""
        while length:
            chunk = min(length, 0x1000 - (linear & 0xFFF))
            phys = self.translate(linear, write, user, touch=touch)
            if not self.memory.contains(phys, chunk):
                raise BusError(phys, chunk, write)
            yield phys, chunk
            linear, length = (linear + chunk) & 0xFFFFFFFF, length - chunk

    def read(self, linear: int, length: int, user: bool = False, touch: bool = True) -> bytes:
        return b"".join(self.memory.read(p, n)
                        for p, n in self._spans(linear, length, False, user, touch))

    def write(self, linear: int, data: bytes, user: bool = False) -> None:
        pieces = list(self._spans(linear, len(data), True, user))  # all checks before any store
        offset = 0
        for phys, n in pieces:
            self.memory.write(phys, data[offset:offset + n])
            offset += n
