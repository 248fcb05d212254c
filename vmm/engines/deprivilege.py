"""Ring deprivileging: the guest kernel's ring 0 runs on real ring 1, its real mode in virtual-8086.

``DeprivilegedGuest`` owns the shadow state of the guest-state area (CR0/CR3/CR4, GDTR/IDTR,
LDTR/TR, the virtual IF and IOPL) and keeps the real CPU configured to match: v8086 while the guest
believes it is in real mode, ring compression (descriptor DPL 0 -> 1, selector RPL = real ring) in
protected mode, the real IF always set and IOPL 0 so CLI/STI/IRET/INT fault into the VMM.
``TrapView`` lets the architectural event delivery reflect exceptions through the guest's IDT.
"""
from __future__ import annotations

from emu.cpu import (
    CS,
    DESC_DPL_SHIFT,
    DESC_P,
    DESC_S,
    DESC_TYPE_SHIFT,
    DS,
    ES,
    FLAG_IF,
    FLAG_VM,
    FS,
    GS,
    IOPL_MASK,
    IOPL_SHIFT,
    SS,
    Cpu,
)
from emu.events import EventDelivery, EventKind, GuestView
from emu.paging import CR0_PE, Fault
from emu.segments import TYPE_ACCESSED, Descriptor, DescriptorTables

CR0_ET = 1 << 4                    # extension type: hard-wired to 1 (the reference CPU's reads)
REAL_RING = (1, 2, 2, 3)           # guest ring -> the ring it really runs in
GUEST_RING = (0, 0, 2, 3)          # real ring -> the ring the guest believes it is in
DATA_RW = DESC_P | DESC_S | (0x3 << DESC_TYPE_SHIFT)
CODE_RX = DESC_P | DESC_S | (0xB << DESC_TYPE_SHIFT)


class UnsupportedGuestState(Exception):
    """The guest did something this deprivileging VMM does not model (said precisely)."""


class TrapView(GuestView):
    """The guest's architectural state, answered from shadow registers and ring compression."""

    def __init__(self, cpu: Cpu, guest: "DeprivilegedGuest"):
        super().__init__(cpu)
        self.guest = guest
        self.state = guest.state

    def protected(self) -> bool:
        return bool(self.state.cr0 & CR0_PE)

    def vm86(self) -> bool:
        return False

    def cpl(self) -> int:
        return GUEST_RING[self.cpu.cpl] if self.protected() else 0

    def gdtr(self):
        return self.state.gdtr.base, self.state.gdtr.limit

    def ldtr(self):
        return self.state.ldtr.base, self.state.ldtr.limit

    def idtr(self):
        return self.state.idtr.base, self.state.idtr.limit

    def tss(self):
        tr = self.state.tr
        return tr.selector, tr.base, tr.limit, tr.type

    def selector(self, seg: int) -> int:
        value = self.cpu.segs[seg].selector
        if seg in (CS, SS) and self.protected():
            return (value & ~3) | GUEST_RING[value & 3]
        return value

    def event_context(self) -> tuple | None:
        """GuestView.event_context from the shadow tables and the guest's ring; CR0/CR3/CR4 are
        the real ones, through which guest memory is read."""
        state = self.state
        if not state.cr0 & CR0_PE:
            return None
        cr = self.cpu.cr
        idtr, gdtr, tr = state.idtr, state.gdtr, state.tr
        return (cr[0], cr[3], cr[4], GUEST_RING[self.cpu.cpl], idtr.base, idtr.limit,
                gdtr.base, gdtr.limit, tr.base, tr.limit, tr.type)

    def returned_selector(self, selector: int) -> int:
        """The code selector a far RET/IRET pops, as the guest means it. What the real CPU
        stored itself at real ring 1 (PUSH CS, and a far CALL to a conforming segment of DPL 0 or
        1, which ring 1 may call without a fault) carries the real RPL 1: guest ring 0."""
        return (selector & ~3) | GUEST_RING[selector & 3] if self.protected() else selector

    def flags(self) -> int:
        """EFLAGS as the guest believes them. In guest user mode IF is taken as set: the kernel
        can only have got there through an IRET at real ring 1, which cannot change the real IF,
        and user code cannot change it either, so the shadow IF is stale there."""
        real = self.cpu.eflags & ~(FLAG_IF | IOPL_MASK | FLAG_VM)
        interrupts = self.state.interrupt_flag or (self.protected() and self.cpu.cpl == 3)
        return real | (FLAG_IF if interrupts else 0) | (self.state.iopl << IOPL_SHIFT)

    def set_flags(self, value: int) -> None:
        self.state.interrupt_flag = bool(value & FLAG_IF)
        self.state.iopl = (value >> IOPL_SHIFT) & 3
        real = (value & ~(IOPL_MASK | FLAG_VM)) | FLAG_IF
        self.cpu.eflags = real | (0 if self.protected() else FLAG_VM)

    def enter_handler_flags(self, saved: int, clear: int) -> None:
        """The shadow IF and IOPL and the real EFLAGS follow, as for any guest EFLAGS write."""
        self.set_flags(saved & ~clear)

    def load_code(self, selector: int, desc: Descriptor, cpl: int) -> None:
        ring = REAL_RING[cpl]
        self.cpu.load_segment(CS, (selector & ~3) | ring, desc.base, desc.limit, desc.with_dpl(ring))

    def load_stack(self, selector: int, desc: Descriptor) -> None:
        ring = REAL_RING[selector & 3]
        self.cpu.load_segment(SS, (selector & ~3) | ring, desc.base, desc.limit, desc.with_dpl(ring))

    def load_real(self, seg: int, selector: int) -> None:
        self.cpu.load_real_segment(seg, selector, dpl=3)


class DeprivilegedGuest:
    """Shadow state of one deprivileged guest, and the real-CPU configuration that follows it."""
    view_class = TrapView

    def __init__(self, vcpu, state):
        self.vcpu = vcpu
        self.cpu: Cpu = vcpu.vm.cpu
        self.lin = vcpu.vm.lin
        self.state = state
        self.view = self.view_class(self.cpu, self)
        self.events = EventDelivery(self.cpu, self.lin, self.view)
        self.tables = DescriptorTables(self.lin)
        self.debug_regs = [0, 0, 0, 0, 0, 0, 0xFFFF0FF0, 0x400]

    # ----- modes --------------------------------------------------------------------------------
    @property
    def protected(self) -> bool:
        return bool(self.state.cr0 & CR0_PE)

    def guest_cpl(self) -> int:
        return self.view.cpl()

    def take_over(self) -> None:
        """Boot: deprivilege the state the firmware left. Real mode runs in virtual-8086 mode;
        32-bit protected mode (a Multiboot hand-over) keeps its flat segments, its GDT and IDT
        in the shadow state and the real registers, with ring 0 compressed onto ring 1."""
        cpu = self.cpu
        if not cpu.protected:
            self.enter_real_mode()
            return
        state = self.state
        state.cr0 = int(cpu.cr[0]) & 0xFFFFFFFF
        state.gdtr.base, state.gdtr.limit = cpu.gdtr.base, cpu.gdtr.limit
        state.idtr.base, state.idtr.limit = cpu.idtr.base, cpu.idtr.limit
        state.interrupt_flag = bool(cpu.system_flags & FLAG_IF)
        state.iopl = (cpu.system_flags & IOPL_MASK) >> IOPL_SHIFT
        cpu.set_system_flags(FLAG_IF, IOPL_MASK | FLAG_VM)
        ring = REAL_RING[0]
        for seg in (CS, SS):
            cache = cpu.segs[seg]
            flags = cache.flags & ~(3 << DESC_DPL_SHIFT) | ring << DESC_DPL_SHIFT
            cpu.load_segment(seg, cache.selector & ~3 | ring, cache.base, cache.limit, flags)

    def enter_real_mode(self) -> None:
        """Boot: the guest's real mode runs in virtual-8086 mode at real CPL 3, IOPL 0."""
        cpu = self.cpu
        self.state.interrupt_flag = bool(cpu.system_flags & FLAG_IF)
        cpu.write_cr(0, self.state.cr0 | CR0_PE)
        cpu.set_system_flags(FLAG_VM | FLAG_IF, IOPL_MASK)
        for seg in (ES, CS, SS, DS, FS, GS):
            cpu.load_real_segment(seg, cpu.segs[seg].selector, dpl=3)

    def enter_protected_mode(self) -> None:
        """CR0.PE was set: leave v8086; keep the real-mode segment caches, now at ring 1."""
        cpu = self.cpu
        cpu.set_system_flags(FLAG_IF, FLAG_VM | IOPL_MASK)
        for seg in (ES, CS, SS, DS, FS, GS):
            cache = cpu.segs[seg]
            ring = 1 if seg in (CS, SS) else 3
            flags = (CODE_RX if seg == CS else DATA_RW) | (ring << DESC_DPL_SHIFT)
            cpu.load_segment(seg, cache.selector, cache.base, 0xFFFF, flags)

    def write_cr0(self, value: int) -> None:
        was_protected = self.protected
        if was_protected and not value & CR0_PE:
            raise UnsupportedGuestState("the guest cleared CR0.PE: returning to real mode is not "
                                        "modelled by the trap engine")
        value = (value | CR0_ET) & 0xFFFFFFFF
        self.state.cr0 = value
        self.cpu.write_cr(0, value | CR0_PE)
        if not was_protected and self.protected:
            self.enter_protected_mode()

    def write_cr(self, n: int, value: int) -> None:
        if n == 0:
            self.write_cr0(value)
            return
        if n == 3:
            self.state.cr3 = value
        elif n == 4:
            self.state.cr4 = value
        elif n == 2:
            self.state.cr2 = value
        self.cpu.write_cr(n, value)

    def read_cr(self, n: int) -> int:
        return {0: self.state.cr0, 2: self.cpu.cr[2] & 0xFFFFFFFF, 3: self.state.cr3,
                4: self.state.cr4}[n]

    # ----- descriptor tables --------------------------------------------------------------------
    def load_table(self, which: str, base: int, limit: int) -> None:
        table = self.state.gdtr if which == "gdtr" else self.state.idtr
        table.base, table.limit = base, limit
        self.cpu.set_table(which, base, limit)

    def descriptor(self, selector: int, vector: int = 13) -> Descriptor:
        return self.tables.read(selector, self.view.gdtr(), self.view.ldtr(), vector)

    def load_system_segment(self, which: str, selector: int) -> None:
        """LLDT / LTR: load from the GDT, mark a TSS busy, mirror into the real register."""
        target = self.state.ldtr if which == "ldtr" else self.state.tr
        cache = self.cpu.ldtr if which == "ldtr" else self.cpu.tr
        if selector & 0xFFFC == 0:  # LDTR and (on the reference CPU) TR become unusable
            target.selector, target.base, target.limit = selector, 0, 0
            if which == "tr":
                target.type = 0
            cache.selector, cache.base, cache.limit, cache.flags = selector, 0, 0, 0
            return
        if selector & 4:
            raise Fault(13, selector & 0xFFFC)
        desc = self.descriptor(selector)
        wanted = (0x2,) if which == "ldtr" else (0x1, 0x9)
        if not desc.system or desc.type not in wanted:
            raise Fault(13, selector & 0xFFFC)
        if not desc.present:
            raise Fault(11, selector & 0xFFFC)
        if which == "tr":
            self.tables.set_bits(selector, self.view.gdtr(), self.view.ldtr(), 0x2)
        target.selector, target.base, target.limit = selector, desc.base, desc.limit
        target.type = desc.type | (0x2 if which == "tr" else 0)
        cache.selector, cache.base, cache.limit = selector, desc.base, desc.limit
        cache.flags = (desc.flags & ~(0xF << DESC_TYPE_SHIFT)) | (target.type << DESC_TYPE_SHIFT)

    def load_data_segment(self, seg: int, selector: int) -> None:
        """MOV/POP to a segment register in protected mode, with the SDM's checks (guest view)."""
        if not self.protected:
            self.cpu.load_real_segment(seg, selector, dpl=3)
            return
        cpl = self.guest_cpl()
        if selector & 0xFFFC == 0:
            if seg == SS:
                raise Fault(13, 0)
            self.cpu.load_segment(seg, selector, 0, 0, 0)
            return
        desc = self.descriptor(selector)
        if seg == SS:
            self._check_stack_segment(selector, desc, cpl)
            self._mark_accessed(selector)
            self.view.load_stack(selector, desc)
            return
        readable = not desc.system and (not desc.is_code or desc.type & 0x2)
        if not readable or (not desc.conforming and desc.dpl < max(cpl, selector & 3)):
            raise Fault(13, selector & 0xFFFC)
        if not desc.present:
            raise Fault(11, selector & 0xFFFC)
        self._mark_accessed(selector)
        self.cpu.load_segment(seg, selector, desc.base, desc.limit, desc.flags | TYPE_ACCESSED << 8)

    def _mark_accessed(self, selector: int) -> None:
        """A data or stack segment load sets the descriptor's accessed bit, as the CPU does."""
        self.tables.set_bits(selector, self.view.gdtr(), self.view.ldtr(), TYPE_ACCESSED)

    @staticmethod
    def _check_stack_segment(selector: int, desc: Descriptor, cpl: int) -> None:
        if selector & 3 != cpl or desc.dpl != cpl or not desc.is_writable_data:
            raise Fault(13, selector & 0xFFFC)
        if not desc.present:
            raise Fault(12, selector & 0xFFFC)

    # ----- events -------------------------------------------------------------------------------
    def reflect(self, vector: int, kind: EventKind, error_code: int | None = None) -> None:
        """Deliver an event through the guest's own IVT/IDT (may escalate to #DF / triple fault)."""
        self.events.deliver(vector, kind, error_code)
