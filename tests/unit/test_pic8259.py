"""8259A pair through its port windows, driven with the sequences real kernels issue."""
import pytest

from vmm.bus import Bus
from vmm.devices.pic8259 import Pic8259Pair

MASTER_CMD, MASTER_DATA, SLAVE_CMD, SLAVE_DATA = 0x20, 0x21, 0xA0, 0xA1
EOI = 0x20
READ_IRR, READ_ISR = 0x0A, 0x0B


class Machine:
    def __init__(self):
        self.kicks = 0
        self.pic = Pic8259Pair(on_intr=self._kick)
        self.bus = Bus("pio")
        self.bus.insert(self.pic.master, 0x20, 2)
        self.bus.insert(self.pic.slave, 0xA0, 2)

    def _kick(self):
        self.kicks += 1

    def outb(self, port, value):
        self.bus.write(port, 1, value)

    def inb(self, port):
        return self.bus.read(port, 1)

    def isr(self, cmd_port):
        self.outb(cmd_port, READ_ISR)
        return self.inb(cmd_port)

    def irr(self, cmd_port):
        self.outb(cmd_port, READ_IRR)
        return self.inb(cmd_port)

    def remap(self, master_icw4=0x01, slave_icw4=0x01):
        """Linux init_8259A / OSDev PIC_remap: ICW1 0x11, bases 0x20/0x28, cascade on IR2."""
        for port, value in [(0x20, 0x11), (0xA0, 0x11), (0x21, 0x20), (0xA1, 0x28),
                            (0x21, 0x04), (0xA1, 0x02), (0x21, master_icw4), (0xA1, slave_icw4)]:
            self.outb(port, value)


@pytest.fixture
def m():
    machine = Machine()
    machine.remap()
    return machine


def test_power_on_everything_masked_and_not_initialized():
    machine = Machine()
    assert machine.inb(MASTER_DATA) == 0xFF and machine.inb(SLAVE_DATA) == 0xFF
    assert not machine.pic.master.initialized
    machine.pic.set_irq(1, True)
    assert not machine.pic.has_interrupt()
    assert machine.kicks == 0


def test_icw1_clears_the_mask_and_the_sequence_sets_vector_bases(m):
    assert m.inb(MASTER_DATA) == 0x00 and m.inb(SLAVE_DATA) == 0x00
    assert m.pic.master.vector_base == 0x20 and m.pic.slave.vector_base == 0x28
    assert m.pic.master.initialized and m.pic.slave.initialized


def test_icw2_keeps_only_the_top_five_bits():
    machine = Machine()
    machine.outb(MASTER_CMD, 0x13)       # edge, single, ICW4 needed
    machine.outb(MASTER_DATA, 0x27)
    machine.outb(MASTER_DATA, 0x01)      # ICW4 (no ICW3 in single mode)
    machine.outb(MASTER_DATA, 0xFE)      # now OCW1
    assert machine.inb(MASTER_DATA) == 0xFE
    machine.pic.set_irq(0, True)
    assert machine.pic.acknowledge() == 0x20


def test_without_ic4_the_sequence_ends_after_icw3():
    machine = Machine()
    machine.outb(MASTER_CMD, 0x10)       # cascade, no ICW4
    machine.outb(MASTER_DATA, 0x08)
    machine.outb(MASTER_DATA, 0x04)
    machine.outb(MASTER_DATA, 0xFD)      # OCW1, not ICW4
    assert machine.inb(MASTER_DATA) == 0xFD
    assert machine.pic.master.initialized


def test_keyboard_irq_is_delivered_and_eoied(m):
    m.pic.set_irq(1, True)
    assert m.pic.has_interrupt() and m.kicks == 1
    assert m.irr(MASTER_CMD) == 0x02
    assert m.pic.acknowledge() == 0x21
    assert m.isr(MASTER_CMD) == 0x02 and m.irr(MASTER_CMD) == 0x00
    assert not m.pic.has_interrupt()
    m.outb(MASTER_CMD, EOI)
    assert m.isr(MASTER_CMD) == 0x00


def test_lower_number_wins_and_in_service_blocks_lower_priority(m):
    m.pic.set_irq(3, True)
    m.pic.set_irq(1, True)
    assert m.pic.acknowledge() == 0x21
    assert not m.pic.has_interrupt()     # IR3 waits behind IR1 in service
    m.pic.set_irq(0, True)               # IR0 outranks IR1: nests
    assert m.pic.has_interrupt()
    assert m.pic.acknowledge() == 0x20
    assert m.isr(MASTER_CMD) == 0x03
    m.outb(MASTER_CMD, EOI)              # non-specific EOI clears the highest: IR0
    assert m.isr(MASTER_CMD) == 0x02
    m.outb(MASTER_CMD, EOI)
    assert m.pic.acknowledge() == 0x23


def test_specific_eoi_clears_only_the_named_level(m):
    m.pic.set_irq(1, True)
    m.pic.acknowledge()
    m.pic.set_irq(0, True)
    m.pic.acknowledge()
    m.outb(MASTER_CMD, 0x61)             # specific EOI for IR1
    assert m.isr(MASTER_CMD) == 0x01


def test_rotating_eoi_commands_act_as_eoi(m):
    m.pic.set_irq(1, True)
    m.pic.acknowledge()
    m.outb(MASTER_CMD, 0xA0)             # rotate on non-specific EOI
    assert m.isr(MASTER_CMD) == 0x00
    m.pic.set_irq(4, True)
    m.pic.acknowledge()
    m.outb(MASTER_CMD, 0xE4)             # rotate on specific EOI, level 4
    assert m.isr(MASTER_CMD) == 0x00


def test_masked_request_stays_in_irr_until_unmasked(m):
    m.outb(MASTER_DATA, 0xFF)
    m.pic.set_irq(1, True)
    assert not m.pic.has_interrupt()
    assert m.irr(MASTER_CMD) == 0x02
    m.outb(MASTER_DATA, 0xFD)            # unmask IR1
    assert m.pic.has_interrupt() and m.kicks == 1
    assert m.pic.acknowledge() == 0x21


def test_edge_triggered_needs_a_new_rising_edge(m):
    m.pic.set_irq(1, True)
    m.pic.acknowledge()
    m.outb(MASTER_CMD, EOI)
    m.pic.set_irq(1, True)               # still high: not an edge
    assert not m.pic.has_interrupt()
    m.pic.set_irq(1, False)
    m.pic.set_irq(1, True)
    assert m.pic.has_interrupt()
    assert m.kicks == 2


def test_a_pulse_is_latched_after_the_line_drops(m):
    m.pic.irq_line(0).pulse()
    assert m.pic.has_interrupt()
    assert m.pic.acknowledge() == 0x20


def test_cascade_irq12_through_the_slave(m):
    m.pic.set_irq(12, True)
    assert m.pic.has_interrupt() and m.kicks == 1
    assert m.pic.acknowledge() == 0x2C
    assert m.isr(SLAVE_CMD) == 0x10
    assert m.isr(MASTER_CMD) == 0x04
    m.outb(SLAVE_CMD, EOI)
    m.outb(MASTER_CMD, EOI)
    assert m.isr(SLAVE_CMD) == 0x00 and m.isr(MASTER_CMD) == 0x00


def test_slave_request_waits_for_master_eoi_of_ir2(m):
    m.pic.set_irq(12, True)
    m.pic.set_irq(14, True)
    assert m.pic.acknowledge() == 0x2C
    m.outb(SLAVE_CMD, EOI)
    assert not m.pic.has_interrupt()     # master IR2 still in service
    m.outb(MASTER_CMD, EOI)
    assert m.pic.has_interrupt()
    assert m.pic.acknowledge() == 0x2E


def test_slave_requests_rank_at_master_ir2(m):
    m.pic.set_irq(3, True)
    m.pic.set_irq(8, True)
    m.pic.set_irq(1, True)
    assert m.pic.acknowledge() == 0x21
    m.outb(MASTER_CMD, EOI)
    assert m.pic.acknowledge() == 0x28   # IR2 (the slave) beats IR3
    m.outb(SLAVE_CMD, EOI)
    m.outb(MASTER_CMD, EOI)
    assert m.pic.acknowledge() == 0x23


def test_slave_mask_blocks_cascade(m):
    m.outb(SLAVE_DATA, 0xFF)
    m.pic.set_irq(12, True)
    assert not m.pic.has_interrupt()
    m.outb(SLAVE_DATA, 0xEF)
    assert m.pic.has_interrupt()
    assert m.pic.acknowledge() == 0x2C


def test_master_spurious_irq7_when_request_vanishes(m):
    m.pic.set_irq(1, True)
    assert m.pic.has_interrupt()
    m.outb(MASTER_DATA, 0x02)            # masked between INT and INTA
    assert m.pic.acknowledge() == 0x27
    assert m.isr(MASTER_CMD) == 0x00


def test_slave_spurious_irq15_leaves_master_ir2_in_service(m):
    m.pic.set_irq(12, True)
    m.outb(SLAVE_DATA, 0x10)             # slave request vanishes; master IR2 edge is latched
    assert m.pic.has_interrupt()
    assert m.pic.acknowledge() == 0x2F
    assert m.isr(SLAVE_CMD) == 0x00
    assert m.isr(MASTER_CMD) == 0x04     # Linux EOIs the master for a spurious IRQ 15


def test_auto_eoi_never_sets_isr():
    machine = Machine()
    machine.remap(master_icw4=0x03)
    machine.pic.set_irq(1, True)
    assert machine.pic.acknowledge() == 0x21
    assert machine.isr(MASTER_CMD) == 0x00
    machine.pic.set_irq(3, True)
    assert machine.pic.acknowledge() == 0x23


def test_poll_mode_read_acts_as_acknowledge(m):
    m.outb(MASTER_CMD, 0x0C)
    assert m.inb(MASTER_CMD) == 0x00     # nothing pending
    m.pic.set_irq(5, True)
    m.outb(MASTER_CMD, 0x0C)
    assert m.inb(MASTER_CMD) == 0x85
    assert m.isr(MASTER_CMD) == 0x20
    assert not m.pic.has_interrupt()


def test_special_mask_mode_lets_lower_levels_through(m):
    m.pic.set_irq(3, True)
    m.pic.acknowledge()
    m.pic.set_irq(5, True)
    assert not m.pic.has_interrupt()
    m.outb(MASTER_DATA, 0x08)            # mask the level in service ...
    m.outb(MASTER_CMD, 0x68)             # ... and set special mask mode
    assert m.pic.has_interrupt()
    assert m.pic.acknowledge() == 0x25
    m.outb(MASTER_CMD, 0x48)             # reset special mask mode
    m.outb(MASTER_CMD, 0x65)
    assert not m.pic.has_interrupt()


def test_level_triggered_mode_follows_the_line():
    machine = Machine()
    for port, value in [(0x20, 0x19), (0x21, 0x20), (0x21, 0x04), (0x21, 0x01)]:
        machine.outb(port, value)
    machine.pic.set_irq(1, True)
    assert machine.pic.acknowledge() == 0x21
    machine.outb(MASTER_CMD, EOI)
    assert machine.pic.has_interrupt()   # still high: requests again
    machine.pic.set_irq(1, False)
    assert not machine.pic.has_interrupt()
    assert machine.pic.acknowledge() == 0x27


def test_icw1_resets_edge_sense_and_pending_state(m):
    m.pic.set_irq(1, True)
    m.pic.acknowledge()
    m.pic.set_irq(4, True)
    m.remap()
    assert m.irr(MASTER_CMD) == 0x00 and m.isr(MASTER_CMD) == 0x00
    m.pic.set_irq(1, True)               # still high since before ICW1: no edge
    assert not m.pic.has_interrupt()


def test_int_stays_low_during_initialization(m):
    m.outb(MASTER_CMD, 0x11)
    m.pic.set_irq(1, True)
    assert not m.pic.has_interrupt()
    for value in (0x20, 0x04, 0x01):
        m.outb(MASTER_DATA, value)
    assert m.pic.has_interrupt()


def test_on_intr_fires_only_on_rising_int(m):
    m.pic.set_irq(1, True)
    m.pic.set_irq(3, True)
    assert m.kicks == 1
    m.pic.acknowledge()
    m.outb(MASTER_CMD, EOI)
    assert m.kicks == 2


@pytest.mark.parametrize("irq", [-1, 2, 16])
def test_irq2_and_out_of_range_lines_are_refused(irq):
    pic = Pic8259Pair()
    with pytest.raises(ValueError):
        pic.set_irq(irq, True)
    with pytest.raises(ValueError):
        pic.irq_line(irq)


def test_all_masked_follows_both_imrs_through_the_cascade():
    pic = Pic8259Pair()
    assert pic.all_masked()                      # power-on: IMR = 0xFF on both chips
    pic.master.write(1, 1, 0xFB)                 # only the cascade input open
    assert pic.all_masked()                      # ... but every slave line is masked
    pic.slave.write(1, 1, 0xEF)                  # IRQ 12 open
    assert not pic.all_masked()
    pic.master.write(1, 1, 0xFF)
    assert pic.all_masked()
    pic.master.write(1, 1, 0xFE)                 # IRQ 0 open
    assert not pic.all_masked()
