"""Cached delivery plans for the common protected-mode event (Intel SDM Vol. 3, 6.12.1).

A plan is what delivering one vector through an IDT interrupt or trap gate resolves to: the
gate's handler offset and type, the handler's code-segment descriptor, and for a privilege change
the TSS's SS0:ESP0 (32-bit TSS) and that stack segment's descriptor. It is a function of the
registers in its context (CR0, CR3, CR4, CPL, IDTR, GDTR, TR) and of the guest memory it was read
from: the page-directory and page-table entries of every page read through, the gate, the
descriptors and the TSS slot. The plan keeps a copy of those bytes and is used only while guest
memory still holds every one of them, so the architectural path would read the same values and
reach the same result: a rewritten gate, descriptor, ESP0 or PTE, or a CR3 switch, is seen by the
next delivery. The frame is pushed through a page checked the same way on every delivery.

Anything outside the common case makes no plan, and ``EventDelivery`` takes its full path: real
mode, virtual-8086 mode, task gates, not-present or out-of-limit gates and descriptors, LDT
selectors, 16-bit TSSs, software interrupts through a gate of lower DPL, page-table entries whose
accessed (or, for the stack, dirty) bit the walk would still set, reads or frames that cross a
page, and every fault.
"""
from __future__ import annotations

import struct

from emu.cpu import CS, ESP, FLAG_IF, FLAG_NT, FLAG_RF, FLAG_TF, FLAG_VM, SS, Cpu
from emu.memory import GuestMemory
from emu.paging import CR0_PG, CR0_WP, CR4_PAE, CR4_PSE, PG_A, PG_D, PG_P, PG_PS, PG_RW, PG_US
from emu.segments import Descriptor, pushed_esp

GATE_INT16, GATE_TRAP16, GATE_INT32, GATE_TRAP32 = 0x6, 0x7, 0xE, 0xF
TSS32_TYPES = (0x9, 0xB)
PAGE = 0x1000
MERGE_GAP = 64          # snapshot ranges closer than this are compared as one slice
MAX_PLANS = 1024        # (vector, context) pairs kept; the table is cleared when full
# context tuple positions (GuestView.event_context)
CTX_CR0, CTX_CR3, CTX_CR4, CTX_CPL = 0, 1, 2, 3
CTX_IDTR_BASE, CTX_IDTR_LIMIT, CTX_GDTR_BASE, CTX_GDTR_LIMIT = 4, 5, 6, 7
CTX_TR_BASE, CTX_TR_LIMIT, CTX_TR_TYPE = 8, 9, 10
U32 = struct.Struct("<I")
FRAMES = {(n, bits): struct.Struct(f"<{n}{'I' if bits == 32 else 'H'}")
          for n in (3, 4, 5, 6) for bits in (16, 32)}


class Plan:
    """One vector's resolved gate, handler segment and (inter-privilege) stack, and the guest
    memory they were read from."""
    __slots__ = ("bits", "clear", "code", "esp0", "gate_dpl", "offset", "ring", "selector",
                 "snapshot", "stack", "stack_selector")

    def __init__(self, snapshot, gate_dpl, selector, code, offset, bits, clear, ring=None,
                 stack_selector=0, stack=None, esp0=0):
        self.snapshot = snapshot            # ((start, end, bytes), ...) of guest-physical memory
        self.gate_dpl = gate_dpl
        self.selector, self.code, self.offset = selector, code, offset
        self.bits, self.clear = bits, clear
        self.ring = ring                    # the handler's ring on a privilege change, else None
        self.stack_selector, self.stack, self.esp0 = stack_selector, stack, esp0

    def current(self, mmap) -> bool:
        """Guest memory still holds every byte this plan was derived from."""
        return _holds(mmap, self.snapshot)


class Reader:
    """Supervisor reads for building a plan: linear -> physical as the page walk would find it,
    recording every entry and byte read; None wherever the full path has work to do."""

    def __init__(self, memory: GuestMemory, ctx: tuple):
        self.memory = memory
        self.ctx = ctx
        self.ranges: list[tuple[int, int]] = []

    def read(self, linear: int, length: int) -> bytes | None:
        linear &= 0xFFFFFFFF
        if (linear & (PAGE - 1)) + length > PAGE:
            return None
        phys = self.physical(linear)
        if phys is None or not self.memory.contains(phys, length):
            return None
        self.ranges.append((phys, phys + length))
        return self.memory.mmap[phys:phys + length]

    def physical(self, linear: int) -> int | None:
        ctx = self.ctx
        if not ctx[CTX_CR0] & CR0_PG:
            return linear
        if ctx[CTX_CR4] & CR4_PAE:
            return None
        pde_addr = (ctx[CTX_CR3] & 0xFFFFF000) + ((linear >> 22) << 2)
        pde = self._entry(pde_addr)
        if pde is None:
            return None
        if pde & PG_PS and ctx[CTX_CR4] & CR4_PSE:
            return (pde & 0xFFC00000) | (linear & 0x3FFFFF)
        pte = self._entry((pde & 0xFFFFF000) + (((linear >> 12) & 0x3FF) << 2))
        return None if pte is None else (pte & 0xFFFFF000) | (linear & 0xFFF)

    def _entry(self, addr: int) -> int | None:
        """A present entry whose accessed bit is already set (else the walk would set it)."""
        if not self.memory.contains(addr, 4):
            return None
        value = U32.unpack_from(self.memory.mmap, addr)[0]
        if value & (PG_P | PG_A) != PG_P | PG_A:
            return None
        self.ranges.append((addr, addr + 4))
        return value

    def snapshot(self) -> tuple:
        merged: list[list[int]] = []
        for start, end in sorted(self.ranges):
            if merged and start <= merged[-1][1] + MERGE_GAP:
                merged[-1][1] = max(merged[-1][1], end)
            else:
                merged.append([start, end])
        mmap = self.memory.mmap
        return tuple((start, end, mmap[start:end]) for start, end in merged)


def build_plan(memory: GuestMemory, vector: int, ctx: tuple) -> Plan | None:
    """The plan of ``vector`` under ``ctx``, or None if its delivery is not the common case."""
    reader = Reader(memory, ctx)
    if vector * 8 + 7 > ctx[CTX_IDTR_LIMIT]:
        return None
    raw = reader.read(ctx[CTX_IDTR_BASE] + vector * 8, 8)
    if raw is None:
        return None
    lo, hi = struct.unpack("<II", raw)
    gate_type = (hi >> 8) & 0x1F
    if gate_type not in (GATE_INT16, GATE_TRAP16, GATE_INT32, GATE_TRAP32) or not hi & 0x8000:
        return None
    selector, cpl = lo >> 16, ctx[CTX_CPL]
    code = _descriptor(reader, selector)
    if code is None or not code.is_code or code.dpl > cpl or not code.present:
        return None
    clear = FLAG_TF | FLAG_NT | FLAG_RF | FLAG_VM | (
        FLAG_IF if gate_type in (GATE_INT16, GATE_INT32) else 0)
    fields = {"gate_dpl": (hi >> 13) & 3, "selector": selector, "code": code,
              "offset": (lo & 0xFFFF) | (hi & 0xFFFF0000),
              "bits": 32 if gate_type in (GATE_INT32, GATE_TRAP32) else 16, "clear": clear}
    if not code.conforming and code.dpl < cpl:
        stack = _tss_stack(reader, code.dpl)
        if stack is None:
            return None
        fields.update(ring=code.dpl, stack_selector=stack[0], stack=stack[1], esp0=stack[2])
    return Plan(reader.snapshot(), **fields)


def _descriptor(reader: Reader, selector: int) -> Descriptor | None:
    """A GDT descriptor (the LDT and the null selector are left to the full path)."""
    ctx = reader.ctx
    index = selector & 0xFFF8
    if selector & 0xFFFC == 0 or selector & 4 or index + 7 > ctx[CTX_GDTR_LIMIT]:
        return None
    raw = reader.read(ctx[CTX_GDTR_BASE] + index, 8)
    return None if raw is None else Descriptor.decode(int.from_bytes(raw, "little"))


def _tss_stack(reader: Reader, ring: int) -> tuple[int, Descriptor, int] | None:
    """(SS, its descriptor, ESP) for ``ring`` from a 32-bit TSS, if all is in order."""
    ctx = reader.ctx
    offset = 4 + 8 * ring
    if ctx[CTX_TR_TYPE] not in TSS32_TYPES or offset + 7 > ctx[CTX_TR_LIMIT]:
        return None
    raw = reader.read(ctx[CTX_TR_BASE] + offset, 8)
    if raw is None:
        return None
    esp, ss_sel = struct.unpack("<II", raw)
    ss_sel &= 0xFFFF
    stack = _descriptor(reader, ss_sel)
    if (stack is None or ss_sel & 3 != ring or stack.dpl != ring or not stack.is_writable_data
            or not stack.present):
        return None
    return ss_sel, stack, esp


class DeliveryPlans:
    """Plans per (vector, context), checked against guest memory before each use, and the fast
    delivery that carries one out through the ``GuestView`` (the same view as the full path)."""

    def __init__(self, cpu: Cpu, memory: GuestMemory, view):
        self.cpu = cpu
        self.memory = memory
        self.mmap = memory.mmap
        self.view = view
        self.plans: dict[tuple[int, tuple], Plan] = {}
        self.stack_pages: dict[tuple[int, bool], tuple] = {}
        self.hits = self.builds = 0

    def deliver(self, vector: int, software: bool, error_code: int | None) -> bool:
        """Deliver by plan; False (nothing changed) where the full path must do it."""
        ctx = self.view.event_context()
        if ctx is None:
            return False
        plan = self.plans.get((vector, ctx))
        if plan is None or not plan.current(self.mmap):
            plan = self._build(vector, ctx)
            if plan is None:
                return False
        else:
            self.hits += 1
        if software and plan.gate_dpl < ctx[CTX_CPL]:
            return False
        return self._carry_out(plan, ctx, error_code)

    def _build(self, vector: int, ctx: tuple) -> Plan | None:
        plan = build_plan(self.memory, vector, ctx)
        if plan is not None:
            if len(self.plans) >= MAX_PLANS:
                self.plans.clear()
            self.plans[vector, ctx] = plan
            self.builds += 1
        return plan

    def _carry_out(self, plan: Plan, ctx: tuple, error_code: int | None) -> bool:
        """Push the frame (checks before any store), load CS (and SS:ESP), jump, clear flags."""
        cpu, view = self.cpu, self.view
        saved = view.flags()
        if plan.ring is None:
            ring, esp, stack_base, stack_bits = ctx[CTX_CPL], cpu.gpr[ESP], cpu.segs[SS].base, \
                cpu.stack_bits
            words = [cpu.eip, view.selector(CS), saved]
        else:
            ring, esp, stack_base = plan.ring, plan.esp0, plan.stack.base
            stack_bits = 32 if plan.stack.big else 16
            words = [cpu.eip, view.selector(CS), saved, cpu.gpr[ESP], view.selector(SS)]
        if error_code is not None:
            words.insert(0, error_code)
        if plan.bits == 16:
            words = [word & 0xFFFF for word in words]
        frame = FRAMES[len(words), plan.bits].pack(*words)
        new_esp, offset = pushed_esp(esp, len(frame), stack_bits)
        phys = self._stack_address((stack_base + offset) & 0xFFFFFFFF, len(frame), ring == 3, ctx)
        if phys is None:
            return False
        self.mmap[phys:phys + len(frame)] = frame
        if plan.ring is not None:
            view.load_stack(plan.stack_selector, plan.stack)
        view.load_code(plan.selector, plan.code, ring)
        cpu.gpr[ESP] = new_esp
        cpu.eip_reg.value = plan.offset
        view.enter_handler_flags(saved, plan.clear)
        return True

    def _stack_address(self, linear: int, length: int, user: bool, ctx: tuple) -> int | None:
        """Where a frame of ``length`` bytes at ``linear`` goes, if the write needs no more than
        the page's current entries (present, writable, user if ``user``, accessed and dirty)."""
        page_offset = linear & (PAGE - 1)
        if page_offset + length > PAGE:
            return None
        if not ctx[CTX_CR0] & CR0_PG:
            return linear if self.memory.contains(linear, length) else None
        key = (linear - page_offset, user)
        known = self.stack_pages.get(key)
        if known is None or known[0] != ctx[:3] or not _holds(self.mmap, known[2]):
            known = self._stack_page(key[0], user, ctx)
            if known is None:
                return None
        return known[1] + page_offset

    def _stack_page(self, page: int, user: bool, ctx: tuple) -> tuple | None:
        """(CR0/CR3/CR4, physical page, its walk's entries) of a page a frame may be written to."""
        reader = Reader(self.memory, ctx)
        phys = reader.physical(page)
        if phys is None or not self.memory.contains(phys, PAGE):
            return None
        entries = [(start, U32.unpack_from(self.mmap, start)[0]) for start, _ in reader.ranges]
        both = entries[0][1] & entries[-1][1]
        dirty = entries[-1][1] & PG_D
        writable = both & PG_RW or (not user and not ctx[CTX_CR0] & CR0_WP)
        if not dirty or not writable or (user and not both & PG_US):
            return None
        known = (ctx[:3], phys, reader.snapshot())
        if len(self.stack_pages) >= MAX_PLANS:
            self.stack_pages.clear()
        self.stack_pages[page, user] = known
        return known


def _holds(mmap, snapshot: tuple) -> bool:
    """Guest memory still holds every (start, end, bytes) of ``snapshot``."""
    for start, end, data in snapshot:
        if mmap[start:end] != data:
            return False
    return True
