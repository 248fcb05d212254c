"""Linear-address access as the CPU performs it: 32-bit paging (4 KiB and 4 MiB pages) in Python.

Used where the VMM (or the emulated "hardware") touches guest memory through linear addresses:
IDT/GDT/TSS reads, stack pushes of an event delivery, decoding at the guest's EIP. Faults are
architectural: a ``Fault`` carrying #PF with the SDM error code and CR2 (Intel SDM Vol. 3, 4.3, 4.7).
"""
from __future__ import annotations


from emu.memory import GuestMemory

PG_P, PG_RW, PG_US, PG_A, PG_D, PG_PS = 1, 2, 4, 0x20, 0x40, 0x80
CR0_PE, CR0_WP, CR0_PG = 1, 1 << 16, 1 << 31
CR4_PSE, CR4_PAE = 1 << 4, 1 << 5

PF_P, PF_W, PF_U, PF_I = 1, 2, 4, 0x10


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


class LinearMemory:
    """Reads and writes guest memory by linear address through the guest's current page tables."""

    def __init__(self, memory: GuestMemory, cr):
        self.memory = memory
        self.cr = cr  # live control registers: cr[0], cr[3], cr[4]

    def translate(self, linear: int, write: bool = False, user: bool = False,
                  fetch: bool = False, touch: bool = True) -> int:
        """Linear -> physical as the MMU does it; ``touch=False`` leaves A/D bits alone (a
        debugger looking, not the CPU accessing)."""
        linear &= 0xFFFFFFFF
        if not self.cr[0] & CR0_PG:
            return linear
        if self.cr[4] & CR4_PAE:
            raise Fault(13, 0)  # PAE paging is not modelled; refuse rather than mistranslate
        err = (PF_W if write else 0) | (PF_U if user else 0) | (PF_I if fetch else 0)
        pde_addr = (self.cr[3] & 0xFFFFF000) + ((linear >> 22) << 2)
        pde = self._entry(pde_addr)
        if not pde & PG_P:
            raise Fault(14, err, linear)
        if pde & PG_PS and self.cr[4] & CR4_PSE:
            self._check(pde, pde, write, user, err, linear)
            if touch:
                self._touch(pde_addr, pde, write)
            return (pde & 0xFFC00000) | (linear & 0x3FFFFF)
        pte_addr = (pde & 0xFFFFF000) + (((linear >> 12) & 0x3FF) << 2)
        pte = self._entry(pte_addr)
        if not pte & PG_P:
            raise Fault(14, err, linear)
        self._check(pde, pte, write, user, err, linear)
        if touch:
            self._touch(pde_addr, pde, False)
            self._touch(pte_addr, pte, write)
        return (pte & 0xFFFFF000) | (linear & 0xFFF)

    def _entry(self, addr: int) -> int:
        if not self.memory.contains(addr, 4):
            raise BusError(addr, 4)
        return self.memory.read_u32(addr)

    def _check(self, pde: int, pte: int, write: bool, user: bool, err: int, linear: int) -> None:
        if user and not (pde & pte & PG_US):
            raise Fault(14, err | PF_P, linear)
        writable = pde & pte & PG_RW
        if write and not writable and (user or self.cr[0] & CR0_WP):
            raise Fault(14, err | PF_P, linear)

    def _touch(self, addr: int, entry: int, write: bool) -> None:
        new = entry | PG_A | (PG_D if write else 0)
        if new != entry:
            self.memory.write_u32(addr, new)

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
