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
Stores the VMM itself makes into guest RAM outside the CPU (device DMA, debugger writes) come
through ``host_wrote`` (vmm/vm.py's RAM-write notification) and drop shadows the same way.

Bounded: shadows are kept for at most MAX_CONTEXTS contexts, least recently entered dropped first,
and at most MAX_PAGES pages per context (a context that outgrows it starts afresh), so a guest
cycling through many address spaces or touching its whole address space cannot grow the VMM's
memory without bound; a dropped shadow entry is only a later hidden fault.
"""
from __future__ import annotations

from collections import OrderedDict

from emu.paging import CR0_WP, CR4_PSE, CR4_SMEP, Translation
from emu.tlb import FILL_WRITE, PROT_W
from vmm.mmu.mmu import PAGE, Mmu

PAGE_MASK = ~0xFFF
MAX_CONTEXTS = 64       # contexts (CR3, CR0.WP, CR4 paging bits, user) whose shadows are kept
MAX_PAGES = 16384       # shadow entries kept per context (64 MiB of guest linear space)


class ShadowMmu(Mmu):
    """The guest walk behind shadow page tables with write-traced guest tables."""

    def __init__(self, vm):
        super().__init__(vm)
        self.contexts: OrderedDict[tuple, dict[int, Translation]] = OrderedDict()
        self.traced: dict[int, set[tuple]] = {}     # guest table frame -> (context, page) keys
        self.maybe_writable: set[int] = set()       # frames granted write since our last flush
        self.traced_writes = 0
        self.dropped_contexts = 0
        self.on_hidden_fault = None  # (linear page, fill access) -> None: an engine that exits
        self.on_traced_write = None  # (linear page) -> None: likewise, for a traced store
        self._filling = 0            # the linear page of the fill in progress
        self._entered = None         # the context of the last fill (most recently used)

    def attach(self) -> None:
        super().attach()
        self.memory.on_host_write = self.host_wrote

    def reset(self) -> None:
        self.contexts.clear()
        self.traced.clear()
        self.maybe_writable.clear()
        self._entered = None
        super().reset()

    def flush(self) -> None:
        self.maybe_writable.clear()
        super().flush()

    def fill(self, page: int, access: int):
        self._filling = page
        return super().fill(page, access)

    def guest_walk(self, page: int, access: int):
        cr = self.cr
        ctx = (cr[3] & PAGE_MASK, cr[0] & CR0_WP, cr[4] & (CR4_PSE | CR4_SMEP), self.cpu.cpl == 3)
        shadows = self._enter(ctx)
        entry = shadows.get(page)
        if entry is not None and (access != FILL_WRITE or entry.dirty):
            return entry
        walk = super().guest_walk(page, access)
        if type(walk) is int:                       # the guest's own #PF
            return walk
        self.stats.hidden_faults += 1
        if self.on_hidden_fault is not None:
            self.on_hidden_fault(page, access)
        if entry is not None:
            self._forget((ctx, page), entry)
        elif len(shadows) >= MAX_PAGES:
            self._drop(ctx)
            shadows = self._enter(ctx)
        shadows[page] = walk
        for table in _tables(walk):
            self._trace(table, (ctx, page))
        return walk

    def _enter(self, ctx: tuple) -> dict:
        """The shadows of ``ctx``, made the most recently used (a new context may push the
        least recently used one out)."""
        shadows = self.contexts.get(ctx)
        if shadows is None:
            if len(self.contexts) >= MAX_CONTEXTS:
                self._drop(next(iter(self.contexts)))
            shadows = self.contexts[ctx] = {}
        elif ctx != self._entered:
            self.contexts.move_to_end(ctx)
        self._entered = ctx
        return shadows

    def _drop(self, ctx: tuple) -> None:
        """Forget every shadow of ``ctx`` and untrace what only they depended on."""
        self.dropped_contexts += 1
        for page, walk in self.contexts.pop(ctx).items():
            self._forget((ctx, page), walk)
        if ctx == self._entered:
            self._entered = None

    def _forget(self, key: tuple, walk) -> None:
        for table in _tables(walk):
            keys = self.traced.get(table)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self.traced[table]

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
        self._drop_derived(frame)

    def host_wrote(self, start: int, length: int) -> None:
        """The VMM stored into guest RAM [start, start + length) outside the CPU (DMA, a
        debugger): shadows derived from a page table there go, as for a guest store."""
        first = start & PAGE_MASK
        for frame in range(first, start + length, PAGE):
            if frame in self.traced:
                self._drop_derived(frame)

    def _drop_derived(self, frame: int) -> None:
        for ctx, page in self.traced.pop(frame):
            shadows = self.contexts.get(ctx)
            walk = shadows.pop(page, None) if shadows is not None else None
            if walk is not None:
                self._forget((ctx, page), walk)


def _tables(walk) -> set[int]:
    """The guest page-table frames a walk read (its PDE's and its PTE's)."""
    return {walk.pde_addr & PAGE_MASK, (walk.pte_addr or walk.pde_addr) & PAGE_MASK}
