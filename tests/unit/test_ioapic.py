"""82093AA I/O APIC through IOREGSEL/IOWIN, delivering to a recorder or to a real local APIC.

Register layout and reset values from the 82093AA datasheet (section 3.2 "Register
descriptions"); the programming sequence is xv6's ioapic.c and the IRQ routes its kernel sets.
"""
import pytest

from vmm.bus import Bus
from vmm.clock import VirtualClock
from vmm.devices.ioapic import IoApic
from vmm.devices.lapic import DM_NMI, LocalApic

BASE = 0xFEC00000
MASKED, LEVEL, LOW, LOGICAL, REMOTE_IRR = 0x10000, 0x8000, 0x2000, 0x800, 0x4000


class Board:
    def __init__(self, apic_id=0):
        self.sent = []
        self.ioapic = IoApic(self.sent.append, apic_id)
        self.bus = Bus("mmio")
        self.bus.insert(self.ioapic, BASE, 0x20)

    def read(self, index):
        self.bus.write(BASE, 4, index)
        return self.bus.read(BASE + 0x10, 4)

    def write(self, index, value):
        self.bus.write(BASE, 4, index)
        self.bus.write(BASE + 0x10, 4, value)

    def route(self, pin, low, cpu=0):
        self.write(0x10 + 2 * pin, low)
        self.write(0x11 + 2 * pin, cpu << 24)


@pytest.fixture
def b():
    return Board()


def test_id_version_arbitration_and_reset_entries():
    b = Board(apic_id=1)
    assert b.read(0x00) == 1 << 24
    assert b.read(0x01) == 0x00170011        # version 0x11, maximum redirection entry 23
    assert b.read(0x02) == 1 << 24
    for pin in range(24):
        assert b.read(0x10 + 2 * pin) == MASKED and b.read(0x11 + 2 * pin) == 0
    assert b.ioapic.all_masked()
    b.write(0x00, 0x0A << 24)
    assert b.read(0x00) == 0x0A << 24 and b.read(0x02) == 0x0A << 24
    b.write(0x01, 0)                         # read-only
    assert b.read(0x01) == 0x00170011


def test_ioregsel_reads_back(b):
    b.bus.write(BASE, 1, 0x13)
    assert b.bus.read(BASE, 4) == 0x13


def test_xv6_routes_and_edge_delivery(b):
    b.route(1, 33)                           # IRQ_KBD -> T_IRQ0 + 1 on CPU 0
    assert not b.ioapic.all_masked()
    line = b.ioapic.irq_line(1)
    line.raise_()
    line.raise_()                            # still high: no second edge
    line.lower()
    line.raise_()
    assert [m.vector for m in b.sent] == [33, 33]
    assert b.sent[0].destination == 0 and not b.sent[0].level_triggered


def test_entry_fields_reach_the_message(b):
    b.route(4, LOGICAL | DM_NMI << 8 | 0x24, cpu=0x03)
    b.ioapic.set_irq(4, True)
    message = b.sent[-1]
    assert message.delivery_mode == DM_NMI and message.logical and message.destination == 3
    assert b.read(0x10 + 8) == LOGICAL | DM_NMI << 8 | 0x24
    assert b.read(0x11 + 8) == 3 << 24


def test_masked_edge_is_lost(b):
    b.route(14, MASKED | 46)
    b.ioapic.set_irq(14, True)
    b.ioapic.set_irq(14, False)
    b.route(14, 46)
    assert b.sent == []


def test_level_remote_irr_holds_until_eoi(b):
    b.route(10, LEVEL | LOW | 0x50)
    b.ioapic.set_irq(10, True)
    b.ioapic.set_irq(10, True)
    assert len(b.sent) == 1 and b.sent[0].level_triggered
    assert b.read(0x10 + 20) & REMOTE_IRR
    b.ioapic.eoi(0x51)                       # another vector: no effect
    assert b.read(0x10 + 20) & REMOTE_IRR
    b.ioapic.eoi(0x50)                       # still asserted: delivered again
    assert len(b.sent) == 2
    b.ioapic.set_irq(10, False)
    b.ioapic.eoi(0x50)
    assert b.read(0x10 + 20) & REMOTE_IRR == 0 and len(b.sent) == 2


def test_unmasking_a_held_level_delivers(b):
    b.route(9, MASKED | LEVEL | 0x39)
    b.ioapic.set_irq(9, True)
    assert b.sent == []
    b.route(9, LEVEL | 0x39)
    assert [m.vector for m in b.sent] == [0x39]


def test_remote_irr_and_delivery_status_are_read_only(b):
    b.route(2, 0x30 | REMOTE_IRR | 0x1000)
    assert b.read(0x10 + 4) == 0x30


def test_pin_range():
    with pytest.raises(ValueError):
        Board().ioapic.irq_line(24)


def test_level_interrupt_through_a_local_apic_and_eoi_broadcast():
    clock = VirtualClock()
    lapic = LocalApic(clock)
    ioapic = IoApic(lapic.receive)
    lapic.on_eoi = ioapic.eoi
    lapic.sources.append(ioapic)
    lapic.write(0xF0, 4, 0x1FF)
    assert lapic.all_masked()
    ioapic.write(0x00, 4, 0x10 + 2 * 11)
    ioapic.write(0x10, 4, LEVEL | 0x3B)
    assert not lapic.all_masked()
    ioapic.set_irq(11, True)
    assert lapic.acknowledge() == 0x3B
    lapic.write(0xB0, 4, 0)                  # EOI: remote IRR cleared, pin still high
    assert lapic.acknowledge() == 0x3B       # so it is delivered again
    ioapic.set_irq(11, False)
    lapic.write(0xB0, 4, 0)
    assert not lapic.has_interrupt()
