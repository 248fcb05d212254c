"""The VMM's MMU: the one TLB-fill handler of every engine (emu/tlb.py calls it on each TLB miss).

A fill walks the guest's page tables as the hardware does (emu/paging.py: A/D bits, U/S against
the CPL, R/W with CR0.WP, 4 KiB and 4 MiB pages), then routes the guest-physical frame: RAM is
granted per access (grants.py), a page behind an MMIO window is granted as it is (QEMU's memory
map sends the access to the window's in-hook device callbacks), and anything else is refused as
unbacked. A walk that faults is refused as an architectural #PF with the walk's error code
(P, W/R, U/S, I/D under SMEP): emu/tlb.py has QEMU raise it from the refused fill, so it reaches
the engine's interrupt hook inside the same run, as a #DE does (native delivers it, trap/bt
reflect it, vtx exits if the bitmap says so), with CR2 the full address. An unbacked access
ends the run; the engine then takes it (``take_refusal``: a report, or an EPT violation under
vtx).

Descriptor-table and TSS reads that QEMU makes as implicit supervisor accesses while CPL = 3
(segment loads, LAR/LSL, far transfers, IRET) reach the fill without their MMU index; a CPL-3
access that the U/S check refuses is therefore walked again as a supervisor access when its page
overlaps the GDT, LDT, IDT or TSS. The price: a user-mode load from such a page is not refused.

TLB flushes: QEMU itself flushes its TLB on MOV CR3 and task switches, on CR0.PG/WP/PE and
CR4.PSE/PGE/PAE/SMEP changes and (one page) on INVLPG, under every engine; this MMU keeps no
translation of its own (shadow.py's subclass does, and is flushed on the same events).
Global pages are flushed with the rest on CR3 loads (a TLB may always drop an entry).

A20: with the gate closed (i8042 output port bit 1 and port 0x92 bit 1 both clear) physical
address bit 20 is forced to 0 on every access, as the A20M# pin of a PC AT does: the
guest-physical frame of every fill is masked, and ``set_a20`` flushes the TLB when the gate
changes. Only the CPU's own accesses pass here; what the VMM itself reads or writes in guest
memory (event delivery's stack frames, the IVT) is not masked.
"""
from __future__ import annotations

from dataclasses import dataclass

from emu.paging import CR0_PG, FETCH, PF_P, READ, WRITE, BusError, PageWalker, Translation
from emu.tlb import FILL_FETCH, FILL_READ, FILL_WRITE, PROT_R, PROT_W, PROT_X
from vmm.mmu.grants import Grants

KIND = {FILL_READ: READ, FILL_WRITE: WRITE, FILL_FETCH: FETCH}
PROT_ALL = PROT_R | PROT_W | PROT_X
PAGE = 0x1000
A20_BIT = 1 << 20


@dataclass
class Unbacked:
    """A fill refused because the guest-physical address has neither RAM nor an MMIO window."""
    access: int     # FILL_READ / FILL_WRITE / FILL_FETCH
    physical: int
    page_only: bool = True  # the frame of the access (its offset comes with the refusal)


@dataclass
class MmuStats:
    fills: int = 0
    page_faults: int = 0     # #PF the guest's tables raise (the guest sees them)
    hidden_faults: int = 0   # fills the VMM's shadow tables lacked (the guest never sees them)


class Mmu:
    """The guest walk for a VM's CPU; engines that keep shadow tables subclass it."""

    def __init__(self, vm):
        self.cpu = vm.cpu
        self.memory = vm.memory
        self.cr = vm.cpu.cr
        self.walker = PageWalker(vm.memory, vm.cpu.cr)
        self.grants = Grants(self.cpu.flush_tlb)
        self.stats = MmuStats()
        self.refusal: Unbacked | None = None
        self._translate = self.walker.translate     # bound once: the fill is a hot path
        self.a20_mask = -1

    def attach(self) -> None:
        """Become the CPU's MMU (every cached translation is dropped)."""
        self.cpu.set_mmu(self.fill)

    def reset(self) -> None:
        """Forget everything cached (a snapshot restored): the CPU's TLB, frame uses, refusals."""
        self.refusal = None
        self.grants.forget()
        self.flush()

    def flush(self) -> None:
        self.cpu.flush_tlb()

    def set_a20(self, enabled: bool) -> None:
        """The A20 gate changed (vmm/devices/i8042.py's A20Gate): mask bit 20 or stop masking."""
        mask = -1 if enabled else ~A20_BIT
        if mask != self.a20_mask:
            self.a20_mask = mask
            self.flush()

    # ----- the fill -----------------------------------------------------------------------------
    def fill(self, page: int, access: int) -> tuple[int, int] | None:
        self.stats.fills += 1
        if not self.cr[0] & CR0_PG:
            return self.route(page & self.a20_mask, access, True, True)
        try:
            walk = self.guest_walk(page, access)
        except BusError as error:
            self.refusal = Unbacked(FILL_READ, error.physical, page_only=False)
            return None
        if type(walk) is int:
            self.stats.page_faults += 1
            self.cpu.tlb.raise_page_fault(walk)
            return None
        return self.route(walk.frame & self.a20_mask, access, walk.writable, walk.dirty)

    def guest_walk(self, page: int, access: int) -> Translation | int:
        """The guest's translation of ``page`` for this access at the current CPL, or the
        error code of the #PF it takes."""
        kind = KIND[access]
        if self.cpu.cpl != 3:
            return self._translate(page, kind, False)
        walk = self._translate(page, kind, True)
        if type(walk) is int and walk & PF_P and self._system_table_page(page):
            return self._translate(page, kind, False)
        return walk

    def route(self, frame: int, access: int, writable: bool, dirty: bool):
        """Grant a guest-physical frame: RAM per access, an MMIO window whole, else refuse."""
        if frame < self.memory.size:
            return frame, self.grants.grant(frame, access, writable, dirty)
        if self.cpu.is_mmio_page(frame):
            return frame, PROT_ALL
        self.refusal = Unbacked(access, frame)
        return None

    def _system_table_page(self, page: int) -> bool:
        cpu = self.cpu
        for table in (cpu.gdtr, cpu.ldtr, cpu.idtr, cpu.tr):
            if table.base <= page + PAGE - 1 and page <= table.base + table.limit:
                return True
        return False

    # ----- after a refused fill -----------------------------------------------------------------
    def take_refusal(self) -> Unbacked | None:
        """The refusal that ended the run, with the full address of the access; None if the run
        ended for another reason."""
        refusal, self.refusal = self.refusal, None
        if refusal is not None and refusal.page_only:
            offset = self.cpu.tlb.refused_address() & (PAGE - 1)
            refusal.physical = (refusal.physical & ~(PAGE - 1)) | offset
        return refusal
