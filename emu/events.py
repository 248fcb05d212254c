"""Architectural delivery of exceptions and interrupts, which Unicorn never performs itself.

Real mode goes through the IVT; protected mode through IDT interrupt and trap gates, with the
privilege change through the TSS's SS0:ESP0, error codes for #DF/#TS/#NP/#SS/#GP/#PF/#AC, CR2 on
#PF, and the double-fault / triple-fault rules (Intel SDM Vol. 3, 6.12-6.15 and Table 6-5). The
same code is the "hardware" of the native engine and the event injection of the VMM: a
``GuestView`` says how the guest's architectural state maps onto the real CPU.
"""
from __future__ import annotations

import struct
from enum import Enum

from emu.cpu import (CS, DESC_B, DS, ES, FS, GS, SS, ESP, FLAG_AC, FLAG_IF, FLAG_NT, FLAG_RF,
                     FLAG_TF, FLAG_VM, Cpu)
from emu.event_plans import DeliveryPlans
from emu.memory import GuestMemoryError
from emu.paging import Fault, LinearMemory
from emu.segments import NP, SS_FAULT, TS, Descriptor, DescriptorTables, pushed_esp

DE, DB, NMI, BP, OF, BR, UD, NM, DF = range(9)
GP, PF, MF, AC = 13, 14, 16, 17
ERROR_CODE_VECTORS = frozenset({DF, TS, NP, SS_FAULT, GP, PF, AC})
CONTRIBUTORY = frozenset({DE, TS, NP, SS_FAULT, GP})
EXCEPTION_NAMES = {0: "#DE", 1: "#DB", 2: "NMI", 3: "#BP", 4: "#OF", 5: "#BR", 6: "#UD", 7: "#NM",
                   8: "#DF", 10: "#TS", 11: "#NP", 12: "#SS", 13: "#GP", 14: "#PF", 16: "#MF",
                   17: "#AC", 18: "#MC", 19: "#XM"}

GATE_TASK, GATE_INT16, GATE_TRAP16, GATE_INT32, GATE_TRAP32 = 0x5, 0x6, 0x7, 0xE, 0xF
PAGE_MASK = 0xFFF


class EventKind(Enum):
    """The VM-entry interruption types of the SDM (Vol. 3, 25.8.3) that this machine delivers."""
    EXTERNAL = 0
    NMI = 2
    HARDWARE_EXCEPTION = 3
    SOFTWARE_INTERRUPT = 4
    SOFTWARE_EXCEPTION = 6


HARDWARE, INT_N, SOFTWARE_EXCEPTION = (EventKind.HARDWARE_EXCEPTION, EventKind.SOFTWARE_INTERRUPT,
                                       EventKind.SOFTWARE_EXCEPTION)  # enum hashing is slow


class TripleFault(Exception):
    """A fault while delivering #DF: the processor shuts down."""

    def __init__(self, chain: list[int]):
        names = " -> ".join(EXCEPTION_NAMES.get(v, f"vector {v}") for v in chain)
        super().__init__(f"triple fault ({names})")
        self.chain = chain


class UnsupportedEvent(Exception):
    """The guest asked for an event mechanism this machine does not model (task gates)."""


def vector_name(vector: int) -> str:
    return EXCEPTION_NAMES.get(vector, f"vector {vector:#x}")


def pushed_error_code(vector: int, kind: EventKind, error_code: int | None) -> int | None:
    """The error code a protected-mode delivery pushes: only hardware exceptions of the vectors
    that have one push it (0 if none was given)."""
    if kind is not HARDWARE or vector not in ERROR_CODE_VECTORS:
        return None
    return 0 if error_code is None else error_code


def is_double_fault(first: int, second: int) -> bool:
    """Table 6-5: contributory after contributory, or #PF/contributory after #PF, make a #DF."""
    if first in CONTRIBUTORY:
        return second in CONTRIBUTORY
    return first == PF and (second in CONTRIBUTORY or second == PF)


class GuestView:
    """The guest's architectural state as the real CPU holds it: the identity, for bare hardware.

    A VMM that runs the guest deprivileged subclasses this to answer with shadow state."""

    def __init__(self, cpu: Cpu):
        self.cpu = cpu

    def protected(self) -> bool:
        return self.cpu.protected

    def vm86(self) -> bool:
        return self.cpu.vm86

    def cpl(self) -> int:
        return 3 if self.cpu.vm86 else self.cpu.cpl

    def gdtr(self) -> tuple[int, int]:
        return self.cpu.gdtr.base, self.cpu.gdtr.limit

    def ldtr(self) -> tuple[int, int]:
        return self.cpu.ldtr.base, self.cpu.ldtr.limit

    def idtr(self) -> tuple[int, int]:
        return self.cpu.idtr.base, self.cpu.idtr.limit

    def tss(self) -> tuple[int, int, int, int]:
        """(selector, base, limit, type) of the task register."""
        tr = self.cpu.tr
        return tr.selector, tr.base, tr.limit, (tr.flags >> 8) & 0xF

    def selector(self, seg: int) -> int:
        return self.cpu.segs[seg].selector

    def event_context(self) -> tuple | None:
        """What a cached delivery plan depends on besides guest memory (emu/event_plans.py):
        (CR0, CR3, CR4, CPL, IDTR base, limit, GDTR base, limit, TR base, limit, type); None
        outside protected mode, and in virtual-8086 mode."""
        cpu = self.cpu
        cr = cpu.cr
        cr0 = cr[0]
        if not cr0 & 1 or cpu.vm86:
            return None
        idtr, gdtr, tr = cpu.idtr, cpu.gdtr, cpu.tr
        return (cr0, cr[3], cr[4], cpu.cpl, idtr.base, idtr.limit, gdtr.base, gdtr.limit,
                tr.base, tr.limit, (tr.flags >> 8) & 0xF)

    def flags(self) -> int:
        return self.cpu.eflags

    def set_flags(self, value: int) -> None:
        self.cpu.eflags = value

    def enter_handler_flags(self, saved: int, clear: int) -> None:
        """EFLAGS on entry to a handler through a gate: ``saved`` (read by ``flags()``) with
        ``clear`` (TF, NT, RF, VM, and IF for an interrupt gate) cleared. Every one of those
        bits lives in QEMU's env->eflags, so they are cleared there, with no API call."""
        self.cpu.set_system_flags(0, clear)

    def load_code(self, selector: int, desc: Descriptor, cpl: int) -> None:
        """CS with RPL = CPL. QEMU's hflags depend on CS only through its B bit (CS32, and
        ADDSEG through it): with that bit unchanged, the segment cache alone changes."""
        cpu = self.cpu
        cache = cpu.segs[CS]
        if (cache.flags ^ desc.flags) & DESC_B:
            cpu.load_segment(CS, (selector & ~3) | cpl, desc.base, desc.limit, desc.flags)
            return
        cache.selector = (selector & ~3 | cpl) & 0xFFFF
        cache.base, cache.limit, cache.flags = desc.base, desc.limit, desc.flags

    def load_stack(self, selector: int, desc: Descriptor) -> None:
        self.cpu.load_segment(SS, selector, desc.base, desc.limit, desc.flags)

    def load_real(self, seg: int, selector: int) -> None:
        self.cpu.load_real_segment(seg, selector)

    def load_null(self, seg: int) -> None:
        self.cpu.load_segment(seg, 0, 0, 0, 0)


class EventDelivery:
    """Delivers one event through the guest's IVT or IDT, escalating to #DF and triple fault."""

    def __init__(self, cpu: Cpu, lin: LinearMemory, view: GuestView):
        self.cpu = cpu
        self.lin = lin
        self.view = view
        self.tables = DescriptorTables(lin)
        self.plans = DeliveryPlans(cpu, lin.memory, view)

    def deliver(self, vector: int, kind: EventKind, error_code: int | None = None) -> None:
        """Deliver by a cached plan when the event is the common case (emu/event_plans.py),
        else architecturally, step by step."""
        software = kind is INT_N or kind is SOFTWARE_EXCEPTION
        if self.plans.deliver(vector, software, pushed_error_code(vector, kind, error_code)):
            return
        chain = [vector]  # the events attempted, in order; a triple fault names the last fault too
        while True:
            try:
                self._deliver_once(vector, kind, error_code)
                return
            except Fault as fault:
                if software:
                    self._back_to_instruction(vector, kind)
                    software = False
                if fault.vector == PF:
                    self.cpu.write_cr(2, fault.cr2)
                if vector == DF:
                    raise TripleFault(chain + [fault.vector]) from None
                if is_double_fault(vector, fault.vector):
                    vector, error_code = DF, 0
                else:
                    vector, error_code = fault.vector, fault.error_code
                chain.append(vector)
                kind = EventKind.HARDWARE_EXCEPTION

    def _back_to_instruction(self, vector: int, kind: EventKind) -> None:
        """A software event whose delivery faults (a gate's DPL below CPL, a gate not present
        or past the IDT's limit...) never happened: the fault is reported at the INT n, INT3
        or INTO itself (SDM Vol. 3, 6.12.1.1 and 6.5), though the engines deliver software
        events with EIP already past the instruction. EIP goes back over it: CD nn (INT n,
        INT 3 too), CC (INT3) or CE (INTO) just before EIP."""
        length = 2 if kind is INT_N else 1
        eip = (self.cpu.eip - length) & 0xFFFFFFFF
        try:
            before = self.lin.read((self.cpu.segs[CS].base + eip) & 0xFFFFFFFF, length,
                                   touch=False)
        except (Fault, GuestMemoryError):
            return
        if before == (bytes((0xCD, vector)) if kind is INT_N else bytes((0xCC,))) or (
                kind is SOFTWARE_EXCEPTION and before == b"\xce"):
            self.cpu.eip = eip

    def _deliver_once(self, vector: int, kind: EventKind, error_code: int | None) -> None:
        if not self.view.protected():
            self._deliver_real(vector)
            return
        self._deliver_protected(vector, kind, pushed_error_code(vector, kind, error_code))

    # ----- real mode ----------------------------------------------------------------------------
    def _deliver_real(self, vector: int) -> None:
        base, limit = self.view.idtr()
        if vector * 4 + 3 > limit:
            raise Fault(GP, 0)
        offset, segment = struct.unpack("<HH", self.lin.read(base + vector * 4, 4))
        flags = self.view.flags()
        cpu = self.cpu
        frame = [cpu.eip, self.view.selector(CS), flags]
        cpu.gpr[ESP] = self._push_frame(cpu.segs[SS].base, cpu.gpr[ESP], frame, 16, 16, user=False)
        self.view.set_flags(flags & ~(FLAG_IF | FLAG_TF | FLAG_AC))
        self.view.load_real(CS, segment)
        cpu.eip = offset

    # ----- protected mode -----------------------------------------------------------------------
    def _deliver_protected(self, vector: int, kind: EventKind, error_code: int | None) -> None:
        ext = 0 if kind in (EventKind.SOFTWARE_INTERRUPT, EventKind.SOFTWARE_EXCEPTION) else 1
        gate_type, selector, offset = self._read_gate(vector, kind, ext)
        desc = self._handler_segment(selector, ext)
        cpl = self.view.cpl()
        bits = 32 if gate_type in (GATE_INT32, GATE_TRAP32) else 16
        from_vm86 = self.view.vm86()
        if not desc.conforming and desc.dpl < cpl:
            if from_vm86 and desc.dpl != 0:
                raise Fault(GP, (selector & 0xFFFC) | ext)
            self._inter_privilege(desc, selector, offset, bits, error_code, from_vm86, ext)
        else:
            if from_vm86:
                raise Fault(GP, (selector & 0xFFFC) | ext)
            self._same_privilege(desc, selector, offset, bits, error_code, cpl)
        clear = FLAG_TF | FLAG_NT | FLAG_RF | FLAG_VM
        if gate_type in (GATE_INT16, GATE_INT32):
            clear |= FLAG_IF
        self.view.set_flags(self._saved_flags & ~clear)

    def _read_gate(self, vector: int, kind: EventKind, ext: int):
        base, limit = self.view.idtr()
        gate_error = (vector << 3) | 2 | ext
        if vector * 8 + 7 > limit:
            raise Fault(GP, gate_error)
        lo, hi = struct.unpack("<II", self.lin.read(base + vector * 8, 8))
        gate_type, dpl, present = (hi >> 8) & 0x1F, (hi >> 13) & 3, hi & 0x8000
        if gate_type == GATE_TASK:
            raise UnsupportedEvent(f"vector {vector:#x} uses a task gate; task switches are not modelled")
        if gate_type not in (GATE_INT16, GATE_TRAP16, GATE_INT32, GATE_TRAP32):
            raise Fault(GP, gate_error)
        software = kind in (EventKind.SOFTWARE_INTERRUPT, EventKind.SOFTWARE_EXCEPTION)
        if software and dpl < self.view.cpl():
            raise Fault(GP, gate_error)
        if not present:
            raise Fault(NP, gate_error)
        offset = (lo & 0xFFFF) | (hi & 0xFFFF0000)
        return gate_type, lo >> 16, offset

    def _handler_segment(self, selector: int, ext: int) -> Descriptor:
        if selector & 0xFFFC == 0:
            raise Fault(GP, ext)
        desc = self.tables.read(selector, self.view.gdtr(), self.view.ldtr(), GP, ext)
        if not desc.is_code or desc.dpl > self.view.cpl():
            raise Fault(GP, (selector & 0xFFFC) | ext)
        if not desc.present:
            raise Fault(NP, (selector & 0xFFFC) | ext)
        return desc

    def _inter_privilege(self, desc, selector, offset, bits, error_code, from_vm86, ext) -> None:
        ring = desc.dpl
        ss_sel, esp = self._tss_stack(ring, ext)
        ss_desc = self._stack_segment(ss_sel, ring, ext)
        cpu, view = self.cpu, self.view
        self._saved_flags = view.flags()
        words = [cpu.eip, view.selector(CS), self._saved_flags, cpu.gpr[ESP], view.selector(SS)]
        if from_vm86:
            words += [view.selector(ES), view.selector(DS), view.selector(FS), view.selector(GS)]
        if error_code is not None:
            words.insert(0, error_code)
        stack_bits = 32 if ss_desc.big else 16
        new_esp = self._push_frame(ss_desc.base, esp, words, bits, stack_bits, user=ring == 3)
        if from_vm86:
            for seg in (ES, DS, FS, GS):
                view.load_null(seg)
        view.load_stack(ss_sel, ss_desc)
        view.load_code(selector, desc, ring)
        cpu.gpr[ESP] = new_esp
        cpu.eip = offset

    def _same_privilege(self, desc, selector, offset, bits, error_code, cpl) -> None:
        cpu, view = self.cpu, self.view
        self._saved_flags = view.flags()
        words = [cpu.eip, view.selector(CS), self._saved_flags]
        if error_code is not None:
            words.insert(0, error_code)
        ss = cpu.segs[SS]
        new_esp = self._push_frame(ss.base, cpu.gpr[ESP], words, bits, cpu.stack_bits,
                                   user=cpl == 3)
        view.load_code(selector, desc, cpl)
        cpu.gpr[ESP] = new_esp
        cpu.eip = offset

    def _tss_stack(self, ring: int, ext: int) -> tuple[int, int]:
        tr_sel, base, limit, tss_type = self.view.tss()
        if tss_type in (0x9, 0xB):
            offset, size = 4 + 8 * ring, 4
        else:
            offset, size = 2 + 4 * ring, 2
        if offset + 2 * size - 1 > limit:
            raise Fault(TS, (tr_sel & 0xFFFC) | ext)
        raw = self.lin.read(base + offset, 2 * size)
        if size == 4:
            esp, ss = struct.unpack("<II", raw)
        else:
            esp, ss = struct.unpack("<HH", raw)
        return ss & 0xFFFF, esp

    def _stack_segment(self, ss_sel: int, ring: int, ext: int) -> Descriptor:
        if ss_sel & 0xFFFC == 0:
            raise Fault(TS, ext)
        desc = self.tables.read(ss_sel, self.view.gdtr(), self.view.ldtr(), TS, ext)
        if ss_sel & 3 != ring or desc.dpl != ring or not desc.is_writable_data:
            raise Fault(TS, (ss_sel & 0xFFFC) | ext)
        if not desc.present:
            raise Fault(SS_FAULT, (ss_sel & 0xFFFC) | ext)
        return desc

    def _push_frame(self, ss_base, esp, words, bits, stack_bits, user) -> int:
        """Write a frame below ``esp`` (all checks before any store); return the new ESP."""
        mask = (1 << bits) - 1
        frame = struct.pack("<%d%s" % (len(words), "I" if bits == 32 else "H"),
                            *(w & mask for w in words))
        new_esp, offset = pushed_esp(esp, len(frame), stack_bits)
        base = (ss_base + offset) & 0xFFFFFFFF
        self._check_push_pages(base, len(frame), bits // 8, user)
        self.lin.write(base, frame, user=user)
        return new_esp

    def _check_push_pages(self, base: int, length: int, width: int, user: bool) -> None:
        """Walk the frame's pages in push order, from the top: a #PF names the first push that
        reaches a page it may not write (CR2 is that push's address, or the page's first byte
        for a push that straddles into it), as the CPU pushing SS (or EFLAGS) first would."""
        top = base + length
        page = (top - 1) & ~PAGE_MASK
        while True:
            try:
                self.lin.translate(max(page, base), write=True, user=user)
            except Fault as fault:
                if fault.vector == PF:
                    last = min(page + PAGE_MASK + 1, top) - width
                    fault.cr2 = max(base + (last - base) // width * width, page) & 0xFFFFFFFF
                raise
            if page <= base:
                return
            page -= PAGE_MASK + 1
