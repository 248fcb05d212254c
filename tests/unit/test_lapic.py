"""xAPIC local APIC through its MMIO window against a virtual clock, without a CPU.

Expected values come from the Intel SDM Vol. 3A chapter 11 (section numbers in the comments) and
from what xv6's lapic.c and Multiboot kernels write (notes/pc-platform.md).
"""
import pytest
from hypothesis import given, strategies as st

from vmm.bus import Bus
from vmm.clock import VirtualClock
from vmm.devices.apic_timer import timer_divisor
from vmm.devices.lapic import (APIC_DEFAULT_BASE, ApicBaseFault, ApicMessage, DM_EXTINT,
                               DM_INIT, DM_NMI, DM_STARTUP, LocalApic)

BASE = APIC_DEFAULT_BASE
ID, VER, TPR, APR, PPR, EOI, LDR, DFR, SVR = 0x20, 0x30, 0x80, 0x90, 0xA0, 0xB0, 0xD0, 0xE0, 0xF0
ISR, TMR, IRR, ESR, ICRLO, ICRHI = 0x100, 0x180, 0x200, 0x280, 0x300, 0x310
TIMER, PCINT, LINT0, LINT1, ERROR = 0x320, 0x340, 0x350, 0x360, 0x370
TICR, TCCR, TDCR = 0x380, 0x390, 0x3E0
MASKED, PERIODIC, LEVEL = 0x10000, 0x20000, 0x8000


class FakePic:
    def __init__(self):
        self.pending = False
        self.masked = True

    def all_masked(self):
        return self.masked

    def has_interrupt(self):
        return self.pending

    def acknowledge(self):
        self.pending = False
        return 0x08


class Cpu:
    """The vCPU side: records callbacks, reads and writes the window through a bus."""

    def __init__(self, apic_id=0, **kwargs):
        self.clock = VirtualClock()
        self.events = []
        self.pic = FakePic()
        self.apic = LocalApic(self.clock, apic_id, extint=self.pic,
                              on_nmi=lambda: self.events.append("nmi"),
                              on_init=lambda: self.events.append("init"),
                              on_startup=lambda v: self.events.append(("sipi", v)),
                              on_eoi=lambda v: self.events.append(("eoi", v)),
                              on_intr=lambda: self.events.append("intr"), **kwargs)
        self.bus = Bus("mmio")
        self.bus.insert(self.apic, BASE, 0x1000)

    def r(self, reg):
        return self.bus.read(BASE + reg, 4)

    def w(self, reg, value):
        self.bus.write(BASE + reg, 4, value)

    def enable(self, spurious=0xFF):
        self.w(SVR, 0x100 | spurious)

    def fixed(self, vector, level=False):
        self.apic.receive(ApicMessage(vector, level_triggered=level))

    def run_to(self, ns):
        self.clock.set(ns)
        self.apic.update()


@pytest.fixture
def cpu():
    c = Cpu()
    c.enable()
    return c


def test_power_on_state_sdm_11_4_7_1():
    c = Cpu(apic_id=3)
    assert c.r(ID) == 3 << 24
    assert c.r(VER) == 0x00050014            # integrated APIC, max LVT entry 5 (11.4.8)
    assert c.r(SVR) == 0xFF and c.r(DFR) == 0xFFFFFFFF and c.r(TPR) == 0
    for reg in (TIMER, 0x330, PCINT, LINT1, ERROR):
        assert c.r(reg) == MASKED
    assert c.r(LINT0) == DM_EXTINT << 8      # the BSP is left in virtual-wire mode
    assert c.apic.read_apic_base() == 0xFEE00900     # base, BSP, enable (11.4.4)


def test_xv6_lapicinit_sequence(cpu):
    cpu.w(SVR, 0x100 | 63)                   # enable, spurious vector 63 (T_IRQ0 + 31)
    cpu.w(TDCR, 0xB)                         # divide by 1
    cpu.w(TIMER, PERIODIC | 32)
    cpu.w(TICR, 10_000_000)
    cpu.w(LINT0, MASKED)
    cpu.w(LINT1, MASKED)
    cpu.w(PCINT, MASKED)                     # version says max LVT >= 4
    cpu.w(ERROR, 51)
    cpu.w(ESR, 0)
    cpu.w(ESR, 0)
    cpu.w(EOI, 0)
    cpu.w(ICRHI, 0)
    cpu.w(ICRLO, 0x80000 | 0x500 | 0x8000)   # BCAST | INIT | LEVEL: INIT level de-assert
    assert cpu.r(ICRLO) & 0x1000 == 0        # delivery status idle at once
    cpu.w(TPR, 0)
    assert cpu.r(TIMER) == PERIODIC | 32 and cpu.r(ESR) == 0
    assert cpu.apic.next_deadline_ns() == 10_000_000        # 1 GHz bus clock, divide by 1
    cpu.run_to(10_000_000)
    assert cpu.apic.has_interrupt() and cpu.apic.acknowledge() == 32


def test_reserved_register_sets_illegal_register_address_in_esr(cpu):
    assert cpu.r(0x2F0) == 0                 # no CMCI LVT on this APIC
    cpu.w(ESR, 0)
    assert cpu.r(ESR) == 0x80                # bit 7, latched by the write (11.5.3)
    cpu.w(ESR, 0)
    assert cpu.r(ESR) == 0


def test_error_lvt_signals_a_new_error(cpu):
    cpu.w(ERROR, 0xFE)
    cpu.fixed(5)                             # vectors 0-15 are illegal: receive illegal vector
    assert cpu.apic.acknowledge() == 0xFE
    cpu.w(ESR, 0)
    assert cpu.r(ESR) == 0x40


def test_highest_priority_first_and_eoi_clears_highest_isr(cpu):
    cpu.fixed(0x41)
    cpu.fixed(0x93)
    cpu.fixed(0x52)
    assert cpu.r(IRR + 0x20) == 1 << (0x41 - 64) | 1 << (0x52 - 64)
    assert cpu.apic.acknowledge() == 0x93
    assert cpu.r(PPR) == 0x90 and cpu.r(ISR + 0x40) == 1 << (0x93 - 128)
    assert not cpu.apic.has_interrupt()      # 0x52 and 0x41 are in lower classes than 0x90
    cpu.w(EOI, 0)
    assert cpu.r(PPR) == 0 and cpu.apic.acknowledge() == 0x52


def test_same_class_is_blocked_by_isr(cpu):
    cpu.fixed(0x35)
    assert cpu.apic.acknowledge() == 0x35
    cpu.fixed(0x3A)                          # higher vector, same class 3: not above PPR 0x30
    assert not cpu.apic.has_interrupt()
    cpu.w(EOI, 0)
    assert cpu.apic.acknowledge() == 0x3A


def test_tpr_blocks_classes_at_or_below_it_and_ppr_follows_11_8_3_1(cpu):
    cpu.w(TPR, 0x45)
    cpu.fixed(0x4F)
    assert cpu.r(PPR) == 0x45 and not cpu.apic.has_interrupt()
    assert cpu.apic.acknowledge() == 0xFF    # spurious vector from SVR, ISR untouched (11.9)
    assert cpu.r(ISR + 0x20) == 0 and cpu.r(APR) == 0x45
    cpu.w(TPR, 0x30)
    assert cpu.apic.acknowledge() == 0x4F and cpu.r(PPR) == 0x40


def test_level_triggered_sets_tmr_and_eoi_broadcasts(cpu):
    cpu.fixed(0x2E, level=True)
    assert cpu.r(TMR + 0x10) == 1 << (0x2E - 32)
    cpu.apic.acknowledge()
    cpu.w(EOI, 0)
    assert ("eoi", 0x2E) in cpu.events
    cpu.fixed(0x2E)                          # edge now: TMR cleared on acceptance (11.8.4)
    assert cpu.r(TMR + 0x10) == 0


def test_software_disabled_masks_lvts_and_drops_fixed_interrupts(cpu):
    cpu.w(TIMER, 0x20)
    cpu.w(SVR, 0xFF)
    assert cpu.r(TIMER) == MASKED | 0x20     # 11.4.7.2
    cpu.w(TIMER, 0x20)
    assert cpu.r(TIMER) & MASKED
    cpu.fixed(0x40)
    assert cpu.r(IRR + 0x20) == 0


def test_intr_callback_on_rising_output(cpu):
    cpu.events.clear()
    cpu.fixed(0x40)
    cpu.fixed(0x50)
    assert cpu.events == ["intr"]


def test_one_shot_timer_counts_down_with_divider_and_stops(cpu):
    cpu.w(TDCR, 0x3)                         # 0011: divide by 16 (Figure 11-10)
    cpu.w(TIMER, 0x40)
    cpu.w(TICR, 1000)
    cpu.clock.set(16 * 10)                   # 10 ticks of 16 ns
    assert cpu.r(TCCR) == 990
    assert cpu.apic.next_deadline_ns() == 16_000
    cpu.run_to(15_999)
    assert not cpu.apic.has_interrupt()
    cpu.run_to(16_000)
    assert cpu.apic.acknowledge() == 0x40
    assert cpu.r(TCCR) == 0 and not cpu.apic.counting()
    assert cpu.apic.next_deadline_ns() is None


def test_periodic_timer_reloads_and_missed_periods_coalesce(cpu):
    cpu.w(TDCR, 0xB)
    cpu.w(TIMER, PERIODIC | 0x30)
    cpu.w(TICR, 100)
    cpu.clock.set(250)
    assert cpu.r(TCCR) == 50
    cpu.apic.update()
    assert cpu.r(IRR + 0x10) == 1 << 16      # one vector 0x30 for two expiries
    assert cpu.apic.next_deadline_ns() == 300


def test_initial_count_zero_stops_the_timer(cpu):
    cpu.w(TIMER, PERIODIC | 0x30)
    cpu.w(TICR, 100)
    cpu.w(TICR, 0)
    assert not cpu.apic.counting() and cpu.r(TCCR) == 0


def test_masked_timer_keeps_counting_without_interrupts(cpu):
    cpu.w(TIMER, MASKED | PERIODIC | 0x30)
    cpu.w(TDCR, 0xB)
    cpu.w(TICR, 100)
    assert cpu.apic.counting() and cpu.apic.next_deadline_ns() is None
    cpu.run_to(1000)
    assert not cpu.apic.has_interrupt()
    cpu.w(TIMER, PERIODIC | 0x30)            # unmasking does not replay old expiries
    assert not cpu.apic.has_interrupt() and cpu.apic.next_deadline_ns() == 1100


def test_divide_change_keeps_the_count_reached(cpu):
    cpu.w(TDCR, 0xB)
    cpu.w(TIMER, 0x30)
    cpu.w(TICR, 1000)
    cpu.clock.set(400)
    cpu.w(TDCR, 0x0)                         # divide by 2 from now on
    assert cpu.r(TCCR) == 600
    cpu.clock.set(600)
    assert cpu.r(TCCR) == 500


@pytest.mark.parametrize("dcr,divisor", [(0x0, 2), (0x1, 4), (0x2, 8), (0x3, 16), (0x8, 32),
                                         (0x9, 64), (0xA, 128), (0xB, 1)])
def test_divide_configuration_table(dcr, divisor):
    assert timer_divisor(dcr) == divisor


def test_self_ipi_and_ipi_to_absent_cpus_complete(cpu):
    sent = []
    cpu.apic.send_ipi = lambda message, shorthand: sent.append((message, shorthand))
    cpu.w(ICRLO, 0x40000 | 0x61)             # shorthand self, fixed, vector 0x61
    assert cpu.apic.acknowledge() == 0x61 and sent == []
    cpu.w(ICRLO, 0xC4500)                    # all excluding self, INIT, assert
    cpu.w(ICRLO, 0xC4608)                    # all excluding self, SIPI vector 8
    assert [m.delivery_mode for m, _ in sent] == [DM_INIT, DM_STARTUP]
    assert cpu.r(ICRLO) & 0x1000 == 0
    assert "init" not in cpu.events


def test_ipi_by_physical_destination(cpu):
    cpu.w(ICRHI, 0 << 24)
    cpu.w(ICRLO, 0x400)                      # NMI to APIC 0 (itself)
    assert cpu.events[-1] == "nmi"
    cpu.w(ICRHI, 5 << 24)
    cpu.w(ICRLO, 0x4070)                     # fixed to absent APIC 5: nothing here
    assert cpu.r(IRR + 0x30) == 0


def test_send_illegal_vector(cpu):
    cpu.w(ICRLO, 0x40000 | 0x0F)
    cpu.w(ESR, 0)
    assert cpu.r(ESR) == 0x20


def test_logical_flat_and_cluster_destinations(cpu):
    cpu.w(LDR, 0x12 << 24)
    assert cpu.apic.accepts(0x02, logical=True) and not cpu.apic.accepts(0x01, logical=True)
    cpu.w(DFR, 0x0FFFFFFF)                   # cluster model
    assert cpu.r(DFR) == 0x0FFFFFFF
    assert cpu.apic.accepts(0x12, logical=True) and not cpu.apic.accepts(0x22, logical=True)


def test_lint1_nmi_and_lint0_level_fixed_with_remote_irr(cpu):
    cpu.w(LINT1, DM_NMI << 8)
    cpu.apic.lint_line(1).raise_()
    assert cpu.events[-1] == "nmi"
    cpu.w(LINT0, LEVEL | 0x44)
    line = cpu.apic.lint_line(0)
    line.raise_()
    assert cpu.r(LINT0) & 0x4000             # remote IRR
    assert cpu.apic.acknowledge() == 0x44
    cpu.w(EOI, 0)
    assert cpu.r(LINT0) & 0x4000 == 0


def test_extint_through_lint0_and_when_hardware_disabled():
    c = Cpu()
    c.pic.pending, c.pic.masked = True, False
    assert c.apic.has_interrupt() and not c.apic.all_masked()
    assert c.apic.acknowledge() == 0x08
    c.w(LINT0, MASKED | DM_EXTINT << 8)
    c.pic.pending = True
    assert not c.apic.has_interrupt() and c.apic.all_masked()
    c.apic.write_apic_base(BASE)             # global enable off: the 8259 goes straight through
    assert c.apic.has_interrupt() and c.r(ID) == 0xFFFFFFFF


def test_apic_base_relocation_and_reserved_bits():
    moves = []
    c = Cpu(on_relocate=lambda old, new: moves.append((old, new)))
    c.apic.write_apic_base(0xFED00000 | 0x800)
    assert moves == [(BASE, 0xFED00000)] and c.apic.read_apic_base() == 0xFED00900
    with pytest.raises(ApicBaseFault):
        c.apic.write_apic_base(BASE | 0x800 | 0x400)     # x2APIC is not offered
    with pytest.raises(ApicBaseFault):
        c.apic.write_apic_base(1 << 40 | 0x800)          # above MAXPHYADDR 36


def test_hardware_disable_returns_to_power_up_state(cpu):
    cpu.w(TPR, 0x20)
    cpu.apic.write_apic_base(BASE)
    cpu.apic.write_apic_base(BASE | 0x800)
    assert cpu.r(TPR) == 0 and cpu.r(SVR) == 0xFF


def test_sub_dword_reads_return_the_addressed_bytes(cpu):
    cpu.w(ID, 0x2A000000)
    assert cpu.bus.read(BASE + ID + 3, 1) == 0x2A
    assert cpu.bus.read(BASE + ID + 4, 4) == 0


@given(st.sets(st.integers(16, 255), min_size=1, max_size=20), st.integers(0, 255),
       st.sets(st.integers(16, 255), max_size=3))
def test_delivered_vector_is_the_highest_pending_above_ppr(pending, tpr, in_service):
    """SDM 11.8.3.1: only a class above PPR[7:4] is delivered, highest vector first."""
    c = Cpu()
    c.enable()
    for vector in sorted(in_service):
        c.fixed(vector)
        c.apic.irr, c.apic.isr = 0, c.apic.isr | 1 << vector
    c.w(TPR, tpr)
    for vector in pending:
        c.fixed(vector)
    isrv = max(in_service, default=0)
    ppr = tpr if tpr >> 4 >= isrv >> 4 else isrv & 0xF0
    assert c.r(PPR) == ppr
    eligible = [v for v in pending if v >> 4 > ppr >> 4]
    assert c.apic.has_interrupt() == bool(eligible)
    vector = c.apic.acknowledge()
    assert vector == (max(eligible) if eligible else 0xFF)
