"""8254 PIT through ports 0x40-0x43 against a virtual clock: modes, latches, deadlines, IRQ0."""
import pytest

from vmm.bus import Bus, IrqLine
from vmm.clock import VirtualClock, WallClock
from vmm.devices.pit8254 import Pit8254

CH0, CH2, CONTROL = 0x40, 0x42, 0x43
LATCH_HZ100 = 11932                      # Linux LATCH for HZ=100: (1193182 + 50) // 100


def at_tick(ticks):
    """First nanosecond by which `ticks` periods of the 1193182 Hz input clock have elapsed."""
    return -(-ticks * 1_000_000_000 // 1_193_182)


class Board:
    def __init__(self):
        self.clock = VirtualClock()
        self.irq_events = []
        irq0 = IrqLine(lambda n, level: self.irq_events.append((n, level)), 0)
        self.pit = Pit8254(self.clock, irq0)
        self.bus = Bus("pio")
        self.bus.insert(self.pit, 0x40, 4)

    def outb(self, port, value):
        self.bus.write(port, 1, value)

    def inb(self, port):
        return self.bus.read(port, 1)

    def program(self, control, count, port=CH0):
        self.outb(CONTROL, control)
        self.outb(port, count & 0xFF)
        self.outb(port, count >> 8 & 0xFF)

    def latched_count(self, latch_command=0x00, port=CH0):
        self.outb(CONTROL, latch_command)
        low = self.inb(port)
        return low | self.inb(port) << 8

    def edges(self):
        return self.irq_events.count((0, True))

    def run_to(self, ns):
        self.clock.set(ns)
        self.pit.update()


@pytest.fixture
def b():
    return Board()


def test_power_on_no_deadline_and_control_port_unreadable(b):
    assert b.pit.next_deadline_ns() is None
    assert b.inb(CONTROL) == 0xFF
    b.run_to(10**9)
    assert b.irq_events == []


def test_linux_hz100_rate_generator_deadlines(b):
    b.program(0x34, LATCH_HZ100)         # counter 0, lobyte/hibyte, mode 2, binary
    assert b.pit.next_deadline_ns() == 10_000_151      # 11932 / 1193182 Hz = 10.000151 ms
    b.run_to(10_000_150)
    assert b.irq_events == []
    b.run_to(10_000_151)
    assert b.irq_events == [(0, True), (0, False)]
    assert b.pit.next_deadline_ns() == 20_000_302


def test_missed_ticks_coalesce_but_the_schedule_stays_aligned(b):
    b.program(0x34, LATCH_HZ100)
    b.run_to(45_000_000)                 # 4 periods have passed (53693 CLKs // 11932)
    assert b.edges() == 1
    assert b.pit.next_deadline_ns() == at_tick(5 * LATCH_HZ100) == 50_000_755
    b.pit.update()
    assert b.edges() == 1
    b.run_to(50_000_755)
    assert b.edges() == 2


def test_count_zero_means_65536(b):
    b.program(0x34, 0)
    assert b.pit.next_deadline_ns() == 54_925_402      # 65536 / 1193182 Hz = 54.9254 ms
    assert b.latched_count() == 0


def test_mode2_count_counts_down_and_reloads(b):
    b.program(0x34, LATCH_HZ100)
    assert b.latched_count() == 11932
    b.clock.set(at_tick(1000))
    assert b.latched_count() == 10932
    b.clock.set(at_tick(LATCH_HZ100 - 1))
    assert b.latched_count() == 1
    b.clock.set(at_tick(LATCH_HZ100))
    assert b.latched_count() == 11932    # mode 2 never shows 0


def test_latch_freezes_the_count_until_read(b):
    b.program(0x34, LATCH_HZ100)
    b.clock.set(at_tick(1000))
    b.outb(CONTROL, 0x00)                # counter latch command, counter 0
    b.clock.set(at_tick(5000))
    b.outb(CONTROL, 0x00)                # a second latch before reading is ignored
    assert b.inb(CH0) == 10932 & 0xFF
    assert b.inb(CH0) == 10932 >> 8
    assert b.latched_count() == 11932 - 5000


def test_unlatched_reads_alternate_low_then_high(b):
    b.program(0x34, 0x1234)
    assert b.inb(CH0) == 0x34
    assert b.inb(CH0) == 0x12


def test_mode0_interrupt_on_terminal_count_fires_once(b):
    b.program(0x30, 1000)                # counter 0, lobyte/hibyte, mode 0
    assert b.pit.next_deadline_ns() == 838_096         # 1000 CLKs = 838.095 us
    b.run_to(838_095)
    assert b.irq_events == []
    b.run_to(838_096)
    assert b.edges() == 1
    assert b.pit.next_deadline_ns() is None
    b.clock.set(at_tick(2000))
    assert b.latched_count() == 65536 - 1000           # keeps counting after terminal count
    b.run_to(at_tick(70_000))
    assert b.edges() == 1


def test_mode0_first_byte_stops_counting_second_restarts(b):
    b.program(0x30, 1000)
    b.clock.set(at_tick(100))
    b.outb(CH0, 0xF4)                    # low byte of 500
    assert b.pit.next_deadline_ns() is None
    b.clock.set(at_tick(300))
    assert b.latched_count() == 900
    b.outb(CH0, 0x01)
    assert b.pit.next_deadline_ns() == at_tick(300) + at_tick(500)


def test_mode3_square_wave_even_count_steps_by_two(b):
    b.program(0x36, 1000)                # counter 0, lobyte/hibyte, mode 3
    assert b.pit.next_deadline_ns() == 838_096
    b.clock.set(at_tick(100))
    assert b.latched_count() == 800
    b.clock.set(at_tick(600))            # 100 CLKs into the low half
    assert b.latched_count() == 800
    b.run_to(at_tick(3000))
    assert b.edges() == 1
    assert b.pit.next_deadline_ns() == at_tick(4000)


def test_mode3_odd_count_sequence_from_datasheet(b):
    b.program(0x36, 5)                   # high: 5, 4, 2; low: 5, 2
    seen = []
    for tick in range(5):
        b.clock.set(at_tick(tick))
        seen.append(b.latched_count())
    assert seen == [5, 4, 2, 5, 2]


def test_read_back_status_and_out(b):
    b.outb(CONTROL, 0x30)
    b.outb(CONTROL, 0xE2)                # read-back: status only, counter 0
    assert b.inb(CH0) == 0x70            # OUT low, null count, RW=11, mode 0
    b.outb(CH0, 0xE8)
    b.outb(CH0, 0x03)
    b.outb(CONTROL, 0xE2)
    assert b.inb(CH0) == 0x30
    b.clock.set(at_tick(1000))
    b.outb(CONTROL, 0xE2)
    assert b.inb(CH0) == 0xB0            # OUT went high at terminal count


def test_read_back_status_comes_before_count(b):
    b.program(0x34, LATCH_HZ100)
    b.clock.set(at_tick(32))
    b.outb(CONTROL, 0xC2)                # latch count and status of counter 0
    assert b.inb(CH0) == 0xB4            # OUT high, RW=11, mode 2
    assert b.inb(CH0) == (11900 & 0xFF)
    assert b.inb(CH0) == 11900 >> 8


def test_lobyte_only_and_hibyte_only_access(b):
    b.outb(CONTROL, 0x14)                # counter 0, lobyte only, mode 2
    b.outb(CH0, 100)
    assert b.pit.next_deadline_ns() == at_tick(100)
    assert b.inb(CH0) == 100 and b.inb(CH0) == 100
    b.outb(CONTROL, 0x24)                # counter 0, hibyte only, mode 2
    b.outb(CH0, 0x01)
    assert b.pit.next_deadline_ns() == at_tick(256)
    assert b.inb(CH0) == 0x01


def test_control_word_stops_the_counter_until_a_new_count(b):
    b.program(0x34, LATCH_HZ100)
    b.outb(CONTROL, 0x34)
    assert b.pit.next_deadline_ns() is None
    b.outb(CH0, 0x9C)
    assert b.pit.next_deadline_ns() is None
    b.outb(CH0, 0x2E)
    assert b.pit.next_deadline_ns() == 10_000_151


def test_edges_due_before_reprogramming_are_not_lost(b):
    b.program(0x34, LATCH_HZ100)
    b.clock.set(10_000_151)
    b.outb(CONTROL, 0x30)                # the vCPU has not called update() yet
    assert b.edges() == 1


def test_counter2_counts_without_touching_irq0(b):
    b.program(0xB6, 1193, port=CH2)      # the speaker tone: counter 2, mode 3
    assert b.pit.next_deadline_ns() is None
    b.clock.set(at_tick(100))
    assert b.latched_count(0x80, port=CH2) == 1193 - 1 - 2 * 99   # odd: -1, then -2 per CLK
    b.run_to(at_tick(5000))
    assert b.irq_events == []


def test_mode4_strobe_rises_one_clock_after_terminal_count(b):
    b.program(0x38, 1000)                # counter 0, lobyte/hibyte, mode 4
    assert b.pit.next_deadline_ns() == at_tick(1001)


@pytest.mark.parametrize("control", [0x32, 0x3A])
def test_gate_triggered_modes_never_fire(b, control):
    b.program(control, 1000)             # modes 1 and 5 wait for a GATE edge
    assert b.pit.next_deadline_ns() is None
    b.run_to(at_tick(5000))
    assert b.irq_events == []


def test_virtual_clock_only_moves_forward():
    clock = VirtualClock()
    assert clock.now_ns() == 0
    clock.advance(250)
    clock.set(1000)
    assert clock.now_ns() == 1000
    with pytest.raises(ValueError):
        clock.set(999)
    with pytest.raises(ValueError):
        clock.advance(-1)


def test_wall_clock_counts_from_its_creation():
    readings = iter([5_000, 5_300, 9_000])
    clock = WallClock(source=lambda: next(readings))
    assert clock.now_ns() == 300
    assert clock.now_ns() == 4_000
