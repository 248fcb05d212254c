"""Shadow paging for the engines that run the guest deprivileged (trap, bt): the VMM's own
translations, built from the guest's page tables and kept coherent by write-tracing them.

A fill is served from the shadow when it holds the page for the current context (CR3, CR0.WP,
CR4.PSE/SMEP, user or supervisor); a fill the shadow lacks is a *hidden page fault*: the VMM walks
the guest's tables (setting their A/D bits as the hardware would), builds the shadow entry and
resumes, and the guest never sees it. Only a walk that the guest's own tables fail is a #PF the
guest takes. Shadows are kept per context, so a CR3 switch back finds them again.

Tracing: every guest page-table frame a shadow entry was derived from is traced. A traced frame
is never granted write permission, and when it becomes traced while a TLB entry might still
grant write to it, the CPU's TLB is flushed; so the first store to it misses the TLB and reaches
the fill, which drops every shadow entry derived from the frame, stops tracing it, and lets the
store through (it is applied by the CPU). The next fill through that frame rebuilds and re-traces.
Not traced: stores the VMM itself makes into guest page tables outside the walk (an emulated
instruction's memory operand, a DMA transfer); they are rare and not made by the shipped guests.
"""
from __future__ import annotations

from emu.paging import CR0_WP, CR4_PSE, CR4_SMEP
from emu.tlb import FILL_WRITE, PROT_W
from vmm.mmu.mmu import Mmu

PAGE_MASK = ~0xFFF


class ShadowMmu(Mmu):
    """The guest walk behind shadow page tables with write-traced guest tables."""

    def __init__(self, vm):
        super().__init__(vm)
        self.shadow: dict[tuple, object] = {}
        self.traced: dict[int, set[tuple]] = {}     # guest table frame -> shadow keys from it
        self.maybe_writable: set[int] = set()       # frames granted write since our last flush
        self.traced_writes = 0
        self.on_hidden_fault = None  # (linear page, fill access) -> None: an engine that exits
        self.on_traced_write = None  # (linear page) -> None: likewise, for a traced store
        self._filling = 0            # the linear page of the fill in progress

    def reset(self) -> None:
        self.shadow.clear()
        self.traced.clear()
        self.maybe_writable.clear()
        super().reset()

    def flush(self) -> None:
        self.maybe_writable.clear()
        super().flush()

    def fill(self, page: int, access: int):
        self._filling = page
        return super().fill(page, access)

    def guest_walk(self, page: int, access: int):
        cr = self.cr
        user = self.cpu.cpl == 3
        key = (cr[3] & PAGE_MASK, cr[0] & CR0_WP, cr[4] & (CR4_PSE | CR4_SMEP), user, page)
        entry = self.shadow.get(key)
        if entry is not None and (access != FILL_WRITE or entry.dirty):
            return entry
        walk = super().guest_walk(page, access)
        if type(walk) is int:                       # the guest's own #PF
            return walk
        self.stats.hidden_faults += 1
        if self.on_hidden_fault is not None:
            self.on_hidden_fault(page, access)
        self.shadow[key] = walk
        for table in {walk.pde_addr & PAGE_MASK, (walk.pte_addr or walk.pde_addr) & PAGE_MASK}:
            self._trace(table, key)
        return walk

    def _trace(self, frame: int, key: tuple) -> None:
        keys = self.traced.get(frame)
        if keys is None:
            keys = self.traced[frame] = set()
            if frame in self.maybe_writable:
                self.flush()
        keys.add(key)

    def route(self, frame: int, access: int, writable: bool, dirty: bool):
        if frame in self.traced:
            if access == FILL_WRITE:
                self._caught(frame)
                if self.on_traced_write is not None:
                    self.on_traced_write(self._filling)
            else:
                grant = super().route(frame, access, writable, dirty)
                return None if grant is None else (grant[0], grant[1] & ~PROT_W)
        grant = super().route(frame, access, writable, dirty)
        if grant is not None and grant[1] & PROT_W:
            self.maybe_writable.add(frame)
        return grant

    def _caught(self, frame: int) -> None:
        """A store to a traced guest page-table frame: its shadows go, and it is untraced."""
        self.traced_writes += 1
        for key in self.traced.pop(frame):
            self.shadow.pop(key, None)
