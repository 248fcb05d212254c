"""The xAPIC local APIC of one vCPU (Intel SDM Vol. 3A ch. 11, "Advanced Programmable Interrupt
Controller"): the 4 KiB register page at IA32_APIC_BASE (MSR 0x1B, 0xFEE00000 after reset), the
IRR/ISR/TMR priority machinery, the ICR, the LVTs and the APIC timer on an injected clock.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

from vmm.bus import IrqLine, all_ones
from vmm.clock import Clock
from vmm.devices.apic_timer import BUS_HZ, ApicTimer
from vmm.snapshot.state import PlainState

MSR_IA32_APIC_BASE = 0x1B
APIC_DEFAULT_BASE = 0xFEE00000
APIC_WINDOW = 0x1000
APIC_BASE_BSP = 1 << 8
APIC_BASE_EXTD = 1 << 10
APIC_BASE_ENABLE = 1 << 11

# Register offsets (SDM Table 11-1, "Local APIC Register Address Map").
ID, VERSION, TPR, APR, PPR, EOI, RRD, LDR, DFR, SVR = (
    0x020, 0x030, 0x080, 0x090, 0x0A0, 0x0B0, 0x0C0, 0x0D0, 0x0E0, 0x0F0)
ISR, TMR, IRR = 0x100, 0x180, 0x200          # eight 32-bit registers each, 0x10 apart
ESR, ICR_LOW, ICR_HIGH = 0x280, 0x300, 0x310
LVT_TIMER, LVT_THERMAL, LVT_PERF, LVT_LINT0, LVT_LINT1, LVT_ERROR = (
    0x320, 0x330, 0x340, 0x350, 0x360, 0x370)
TIMER_INITIAL_COUNT, TIMER_CURRENT_COUNT, TIMER_DIVIDE_CONFIG = 0x380, 0x390, 0x3E0

# Version register (SDM 11.4.8): an integrated APIC (0x14) with six LVT entries (max LVT 5).
APIC_VERSION = 0x14
MAX_LVT_ENTRY = 5
SVR_APIC_ENABLED = 1 << 8
SVR_WRITABLE = 0x3FF                       # vector, software enable, focus processor checking
LVT_MASKED = 1 << 16
LVT_DELIVERY_STATUS = 1 << 12
LVT_REMOTE_IRR = 1 << 14
LVT_LEVEL_TRIGGER = 1 << 15
TIMER_PERIODIC = 1 << 17
# Writable bits per LVT (SDM Figure 11-8); TSC-deadline mode (bit 18) is not offered.
LVT_WRITABLE = {LVT_TIMER: 0x300FF, LVT_THERMAL: 0x107FF, LVT_PERF: 0x107FF,
                LVT_LINT0: 0x1A7FF, LVT_LINT1: 0x1A7FF, LVT_ERROR: 0x100FF}
ICR_WRITABLE = 0xCCFFF                     # vector, mode, dest mode, level, trigger, shorthand
ICR_LEVEL_ASSERT = 1 << 14

# Delivery modes (SDM 11.5.1 and 11.6.1).
DM_FIXED, DM_LOWEST, DM_SMI, DM_NMI, DM_INIT, DM_STARTUP, DM_EXTINT = 0, 1, 2, 4, 5, 6, 7
SH_NONE, SH_SELF, SH_ALL_INCLUDING_SELF, SH_ALL_EXCLUDING_SELF = 0, 1, 2, 3
# Error Status Register bits (SDM Figure 11-9).
ESR_SEND_ILLEGAL_VECTOR = 1 << 5
ESR_RECEIVE_ILLEGAL_VECTOR = 1 << 6
ESR_ILLEGAL_REGISTER = 1 << 7


_SIZE_MASKS = {size: all_ones(size) for size in (1, 2, 4, 8)}


class ApicBaseFault(ValueError):
    """A WRMSR to IA32_APIC_BASE that sets a reserved bit: the CPU side raises #GP(0)."""


class ApicMessage(NamedTuple):
    """One interrupt message on the (system-bus) APIC bus, from an IOAPIC or an IPI."""

    vector: int
    delivery_mode: int = DM_FIXED
    level_triggered: bool = False
    destination: int = 0
    logical: bool = False
    assert_: bool = True                   # False only for an INIT level de-assert


def _highest(bits: int) -> int:
    """The highest set bit of a 256-bit vector set (its highest-priority vector), or -1."""
    return bits.bit_length() - 1


class LocalApic(PlainState):
    """One xAPIC. Power-on state per SDM 11.4.7.1: ID from ``apic_id``, every LVT masked, SVR
    0xFF (software disabled), DFR all ones, everything else 0. ``bsp`` marks the bootstrap
    processor in IA32_APIC_BASE and, as QEMU's board firmware does, leaves LINT0 in ExtINT mode
    unmasked (virtual wire) so an 8259 (``extint``) can still interrupt the CPU.

    Callbacks for the CPU side (each optional): ``on_nmi()``, ``on_init()``, ``on_startup(vector)``
    for NMI/INIT/SIPI messages accepted by this APIC; ``send_ipi(message, shorthand)`` for an IPI
    that may reach other CPUs (None: there are none, the IPI completes); ``on_eoi(vector)`` the
    EOI broadcast for a level-triggered vector (IOAPIC remote IRR); ``on_intr()`` when an
    interrupt becomes deliverable (kick the vCPU); ``on_relocate(old, new)`` when the MSR moves
    the window; ``on_reconfigure()`` after every register write (as the 8254's).

    Delivery is instantaneous: the ICR delivery status always reads idle. Only dword-aligned
    32-bit writes take effect; reads of any size return the addressed bytes. SMI messages and
    ExtINT messages from an IOAPIC are dropped; the thermal and performance LVTs have no source.
    """

    name = "lapic"
    STATE = ("base", "hw_enabled", "_lint_levels", "id", "tpr", "ldr", "icr_low", "icr_high",
             "dfr", "svr", "irr", "isr", "tmr", "esr", "_errors", "lvt", "_int_output")

    def __init__(self, clock: Clock, apic_id: int = 0, bsp: bool = True, *,
                 extint=None, bus_hz: int = BUS_HZ, phys_addr_bits: int = 36,
                 on_nmi: Callable[[], None] | None = None,
                 on_init: Callable[[], None] | None = None,
                 on_startup: Callable[[int], None] | None = None,
                 send_ipi: Callable[[ApicMessage, int], None] | None = None,
                 on_eoi: Callable[[int], None] | None = None,
                 on_intr: Callable[[], None] | None = None,
                 on_relocate: Callable[[int, int], None] | None = None) -> None:
        self._clock = clock
        self.extint = extint                # an 8259 pair: all_masked/has_interrupt/acknowledge
        self.sources: list = []             # IOAPICs feeding this APIC: each has all_masked()
        self._bus_hz = bus_hz
        self.bsp = bsp
        self._base_mask = ((1 << phys_addr_bits) - 1) & ~0xFFF
        self.on_nmi, self.on_init, self.on_startup = on_nmi, on_init, on_startup
        self.send_ipi, self.on_eoi, self.on_intr = send_ipi, on_eoi, on_intr
        self.on_relocate = on_relocate
        self.on_reconfigure: Callable[[], None] | None = None
        self.base = APIC_DEFAULT_BASE
        self.hw_enabled = True
        self._initial_id = apic_id
        self._lint_levels = [False, False]
        self._power_on()

    def save_state(self) -> dict:
        return {**super().save_state(), "timer": self.timer.save_state()}

    def load_state(self, state: dict) -> None:
        super().load_state(state)
        self.timer.load_state(state["timer"])

    def _power_on(self) -> None:
        self.id = self._initial_id << 24
        self.tpr = self.ldr = self.icr_low = self.icr_high = 0
        self.dfr = 0xFFFFFFFF
        self.svr = 0xFF
        self.irr = self.isr = self.tmr = 0
        self.esr = self._errors = 0
        self.lvt = {reg: LVT_MASKED for reg in LVT_WRITABLE}
        if self.bsp:
            self.lvt[LVT_LINT0] = DM_EXTINT << 8
        self.timer = ApicTimer(self._clock, self._bus_hz)
        self._int_output = False

    # ----- IA32_APIC_BASE (SDM 11.4.4) -------------------------------------------------------
    def read_apic_base(self) -> int:
        return (self.base | (APIC_BASE_BSP if self.bsp else 0)
                | (APIC_BASE_ENABLE if self.hw_enabled else 0))

    def write_apic_base(self, value: int) -> None:
        """WRMSR 0x1B. The BSP flag is read-only; x2APIC (EXTD) is not offered, so setting it
        faults like any reserved bit. Clearing the enable flag returns the APIC to its power-up
        state (SDM 11.4.3) and removes the window; the base moves through ``on_relocate``."""
        writable = self._base_mask | APIC_BASE_ENABLE | APIC_BASE_BSP
        if value & ~writable:
            raise ApicBaseFault(f"IA32_APIC_BASE reserved bits in {value:#x}")
        new_base, enable = value & self._base_mask, bool(value & APIC_BASE_ENABLE)
        if not enable and self.hw_enabled:
            self._power_on()
        self.hw_enabled = enable
        if new_base != self.base:
            old, self.base = self.base, new_base
            if self.on_relocate is not None:
                self.on_relocate(old, new_base)
        self._changed()

    # ----- the register page -----------------------------------------------------------------
    def read(self, offset: int, size: int) -> int:
        if not self.hw_enabled:
            return all_ones(size)
        if offset & 0xC:
            return 0
        reader = self._READERS.get(offset & 0xFF0)
        value = reader(self) if reader is not None else self._read_register(offset & 0xFF0)
        return value >> (offset & 3) * 8 & _SIZE_MASKS[size]

    def write(self, offset: int, size: int, value: int) -> None:
        if not self.hw_enabled or size != 4 or offset & 0xF:
            return
        self._write_register(offset & 0xFF0, value & 0xFFFFFFFF)
        self._changed()
        if self.on_reconfigure is not None:
            self.on_reconfigure()

    def _read_register(self, reg: int) -> int:
        reader = self._READERS.get(reg)
        if reader is not None:
            return reader(self)
        if reg in self.lvt:
            return self.lvt[reg]
        for first, bits in ((ISR, self.isr), (TMR, self.tmr), (IRR, self.irr)):
            if first <= reg < first + 0x80:
                return bits >> ((reg - first) >> 4) * 32 & 0xFFFFFFFF
        self._error(ESR_ILLEGAL_REGISTER)
        return 0

    _READERS = {ID: lambda self: self.id, VERSION: lambda self: APIC_VERSION | MAX_LVT_ENTRY << 16,
                TPR: lambda self: self.tpr, APR: lambda self: self.apr(),
                PPR: lambda self: self.ppr(), EOI: lambda self: 0, RRD: lambda self: 0,
                LDR: lambda self: self.ldr, DFR: lambda self: self.dfr, SVR: lambda self: self.svr,
                ESR: lambda self: self.esr, ICR_LOW: lambda self: self.icr_low,
                ICR_HIGH: lambda self: self.icr_high,
                TIMER_INITIAL_COUNT: lambda self: self.timer.initial_count,
                TIMER_CURRENT_COUNT: lambda self: self.timer.current_count(self.periodic),
                TIMER_DIVIDE_CONFIG: lambda self: self.timer.dcr}

    def _write_register(self, reg: int, value: int) -> None:
        if reg in self.lvt:
            self._write_lvt(reg, value)
            return
        writer = self._WRITERS.get(reg)
        if writer is not None:
            writer(self, value)
        elif not (reg in (VERSION, APR, PPR, RRD, TIMER_CURRENT_COUNT)
                  or ISR <= reg < IRR + 0x80):
            self._error(ESR_ILLEGAL_REGISTER)   # read-only registers ignore writes silently

    def _write_id(self, value: int) -> None:
        self.id = value & 0xFF000000

    def _write_tpr(self, value: int) -> None:
        self.tpr = value & 0xFF

    def _write_ldr(self, value: int) -> None:
        self.ldr = value & 0xFF000000

    def _write_dfr(self, value: int) -> None:
        self.dfr = value | 0x0FFFFFFF

    def _write_svr(self, value: int) -> None:
        """Clearing the software-enable bit masks every LVT (SDM 11.4.7.2)."""
        self.svr = value & SVR_WRITABLE
        if not self.software_enabled:
            self.update()
            for reg in self.lvt:
                self.lvt[reg] |= LVT_MASKED

    def _write_esr(self, value: int) -> None:
        """A write latches the errors seen since the last write and clears them (SDM 11.5.3)."""
        self.esr, self._errors = self._errors, 0

    def _write_icr_high(self, value: int) -> None:
        self.icr_high = value & 0xFF000000

    def _write_icr_low(self, value: int) -> None:
        self.icr_low = value & ICR_WRITABLE
        self._send_ipi()

    def _write_lvt(self, reg: int, value: int) -> None:
        """Deliver any expiry due under the old setting first; the read-only delivery status and
        remote IRR bits are kept; the mask cannot be cleared while software-disabled."""
        self.update()
        if reg == LVT_TIMER and (value ^ self.lvt[reg]) & TIMER_PERIODIC:
            self.timer.restart(self.timer.current_count(self.periodic))
        if not self.software_enabled:
            value |= LVT_MASKED
        kept = self.lvt[reg] & ~LVT_WRITABLE[reg]
        self.lvt[reg] = kept | value & LVT_WRITABLE[reg]

    def _write_initial_count(self, value: int) -> None:
        """A new initial count restarts the timer from it; 0 stops the timer (SDM 11.5.4)."""
        self.update()
        self.timer.load(value)

    def _write_dcr(self, value: int) -> None:
        """The new divider applies from now on: the count reached so far is kept."""
        self.update()
        self.timer.set_divide(value, self.periodic)

    _WRITERS = {ID: _write_id, TPR: _write_tpr, EOI: lambda self, value: self._eoi(),
                LDR: _write_ldr, DFR: _write_dfr, SVR: _write_svr, ESR: _write_esr,
                ICR_LOW: _write_icr_low, ICR_HIGH: _write_icr_high,
                TIMER_INITIAL_COUNT: _write_initial_count, TIMER_DIVIDE_CONFIG: _write_dcr}

    # ----- priorities (SDM 11.8.3) -----------------------------------------------------------
    @property
    def software_enabled(self) -> bool:
        return bool(self.svr & SVR_APIC_ENABLED)

    def ppr(self) -> int:
        """PPR = TPR if TPR[7:4] >= ISRV[7:4], else ISRV[7:4] with bits 3:0 clear (11.8.3.1)."""
        isrv = max(_highest(self.isr), 0)
        return self.tpr if self.tpr >> 4 >= isrv >> 4 else isrv & 0xF0

    def apr(self) -> int:
        """Arbitration priority (SDM 11.6.2, Figure 11-15 rules)."""
        isrv, irrv = max(_highest(self.isr), 0), max(_highest(self.irr), 0)
        if self.tpr >> 4 >= irrv >> 4 and self.tpr >> 4 > isrv >> 4:
            return self.tpr
        return max(self.tpr & 0xF0, isrv & 0xF0, irrv & 0xF0)

    def deliverable_vector(self) -> int | None:
        """The highest IRR vector whose priority class is above the PPR's, or None."""
        vector = _highest(self.irr)
        return vector if vector >= 0 and vector >> 4 > self.ppr() >> 4 else None

    # ----- the interrupt-controller protocol (vmm.vm.InterruptController) --------------------
    def all_masked(self) -> bool:
        """Nothing can become deliverable without the guest acting first."""
        extint_closed = (self.extint is None or not self._extint_open()
                         or self.extint.all_masked())
        return not self.irr and extint_closed and all(s.all_masked() for s in self.sources)

    def has_interrupt(self) -> bool:
        return self.deliverable_vector() is not None or self._extint_pending()

    def acknowledge(self) -> int:
        """INTA: the highest deliverable vector moves IRR -> ISR; else the 8259's vector through
        LINT0 ExtINT; else the spurious vector from SVR (SDM 11.9), with ISR untouched."""
        vector = self.deliverable_vector()
        if vector is not None:
            self.irr &= ~(1 << vector)
            self.isr |= 1 << vector
        elif self._extint_pending():
            vector = self.extint.acknowledge()
        else:
            vector = self.svr & 0xFF
        self._changed()
        return vector

    def _extint_open(self) -> bool:
        """The 8259's INTR reaches the CPU: APIC hardware-disabled, or LINT0 unmasked ExtINT."""
        lint0 = self.lvt[LVT_LINT0]
        return not self.hw_enabled or (lint0 >> 8 & 7 == DM_EXTINT and not lint0 & LVT_MASKED)

    def _extint_pending(self) -> bool:
        return self.extint is not None and self._extint_open() and self.extint.has_interrupt()

    def _eoi(self) -> None:
        """Clear the highest ISR bit; a level-triggered vector is broadcast to the IOAPICs."""
        vector = _highest(self.isr)
        if vector < 0:
            return
        self.isr &= ~(1 << vector)
        if self.tmr >> vector & 1:
            for reg in (LVT_LINT0, LVT_LINT1):
                if self.lvt[reg] & 0xFF == vector:
                    self.lvt[reg] &= ~LVT_REMOTE_IRR
            if self.on_eoi is not None:
                self.on_eoi(vector)

    def _changed(self) -> None:
        """Tell the vCPU when the INTR output rises."""
        output = self.has_interrupt()
        rising = output and not self._int_output
        self._int_output = output
        if rising and self.on_intr is not None:
            self.on_intr()

    # ----- accepting messages ----------------------------------------------------------------
    def accepts(self, destination: int, logical: bool) -> bool:
        """Destination match (SDM 11.6.2.1-2): physical ID or 0xFF; logical flat or cluster."""
        if not logical:
            return destination in (self.id >> 24, 0xFF)
        ldr = self.ldr >> 24
        if self.dfr >> 28 == 0xF:
            return bool(destination & ldr)
        if destination == 0xFF:
            return True
        return destination >> 4 == ldr >> 4 and bool(destination & ldr & 0xF)

    def receive(self, message: ApicMessage) -> None:
        """A message addressed by destination (an IOAPIC's, another CPU's IPI)."""
        if self.hw_enabled and self.accepts(message.destination, message.logical):
            self.deliver(message)

    def deliver(self, message: ApicMessage) -> None:
        """A message already known to be for this APIC (destination shorthand or matched)."""
        mode = message.delivery_mode
        if mode in (DM_FIXED, DM_LOWEST):
            self._accept(message.vector, message.level_triggered)
        elif mode == DM_NMI and self.on_nmi is not None:
            self.on_nmi()
        elif mode == DM_INIT and message.assert_ and self.on_init is not None:
            self.on_init()
        elif mode == DM_STARTUP and self.on_startup is not None:
            self.on_startup(message.vector)
        self._changed()

    def _accept(self, vector: int, level: bool) -> None:
        """Into IRR; TMR records the trigger mode (SDM 11.8.4). Vectors 0-15 are illegal, and a
        software-disabled APIC accepts no fixed interrupts (11.4.7.2)."""
        if vector < 16:
            self._error(ESR_RECEIVE_ILLEGAL_VECTOR)
            return
        if not self.software_enabled:
            return
        bit = 1 << vector
        self.irr |= bit
        self.tmr = self.tmr | bit if level else self.tmr & ~bit

    def _error(self, bit: int) -> None:
        """Record an error; a newly seen one signals through the error LVT."""
        new = bit & ~self._errors
        self._errors |= bit
        lvt = self.lvt[LVT_ERROR]
        if new and not lvt & LVT_MASKED and lvt & 0xFF >= 16:
            self._accept(lvt & 0xFF, False)
            self._changed()

    def _send_ipi(self) -> None:
        """ICR low write (SDM 11.6.1): deliver to this APIC if addressed, hand the rest over."""
        icr = self.icr_low
        mode, shorthand = icr >> 8 & 7, icr >> 18 & 3
        message = ApicMessage(icr & 0xFF, mode, bool(icr & LVT_LEVEL_TRIGGER), self.icr_high >> 24,
                              bool(icr & 1 << 11), bool(icr & ICR_LEVEL_ASSERT)
                              or not icr & LVT_LEVEL_TRIGGER)
        if mode in (DM_FIXED, DM_LOWEST) and message.vector < 16:
            self._error(ESR_SEND_ILLEGAL_VECTOR)
            return
        own = not message.logical and message.destination == self.id >> 24
        if shorthand in (SH_ALL_INCLUDING_SELF, SH_ALL_EXCLUDING_SELF) or (
                shorthand == SH_NONE and not own):
            if self.send_ipi is not None:
                self.send_ipi(message, shorthand)
        if shorthand in (SH_SELF, SH_ALL_INCLUDING_SELF):
            self.deliver(message)
        elif shorthand == SH_NONE:
            self.receive(message)

    # ----- LINT0/LINT1 pins ------------------------------------------------------------------
    def lint_line(self, pin: int) -> IrqLine:
        if pin not in (0, 1):
            raise ValueError(f"LINT{pin}: the local APIC has LINT0 and LINT1")
        return IrqLine(self.set_lint, pin)

    def set_lint(self, pin: int, level: bool) -> None:
        """Drive LINTn. Fixed mode: an edge on a rising level, or level-triggered with remote IRR
        (set on acceptance, cleared by the EOI); NMI on the rising edge; ExtINT is the 8259 path."""
        rising = level and not self._lint_levels[pin]
        self._lint_levels[pin] = level
        reg = (LVT_LINT0, LVT_LINT1)[pin]
        lvt = self.lvt[reg]
        if lvt & LVT_MASKED or not self.hw_enabled:
            return
        mode = lvt >> 8 & 7
        if mode == DM_FIXED and lvt & LVT_LEVEL_TRIGGER:
            if level and not lvt & LVT_REMOTE_IRR:
                self.lvt[reg] |= LVT_REMOTE_IRR
                self._accept(lvt & 0xFF, True)
        elif rising and mode in (DM_FIXED, DM_NMI):
            self.deliver(ApicMessage(lvt & 0xFF, mode))
        self._changed()

    # ----- the APIC timer (SDM 11.5.4) and the Timer protocol (vmm.vm.Timer) -----------------
    @property
    def periodic(self) -> bool:
        return bool(self.lvt[LVT_TIMER] & TIMER_PERIODIC)

    def counting(self) -> bool:
        return self.timer.running

    def next_deadline_ns(self) -> int | None:
        """When the next timer interrupt is due (may be past); None if stopped or masked."""
        if self.lvt[LVT_TIMER] & LVT_MASKED:
            return None
        return self.timer.next_expiry_ns()

    def update(self) -> None:
        """Deliver the timer vector once if an expiry passed (missed periods coalesce); a
        masked timer's expiries pass unseen."""
        lvt = self.lvt[LVT_TIMER]
        if self.timer.take_expiries(self.periodic) and not lvt & LVT_MASKED:
            self._accept(lvt & 0xFF, False)
            self._changed()
