"""The Intel 8254 programmable interval timer (8254 datasheet) at ports 0x40-0x43, CLK 1193182 Hz.

Counts are derived from an injected clock, never from a running timer: a counter remembers when
its count was loaded and computes its value, its OUT pin and its next OUT rising edge from the
time elapsed. Channel 0's OUT drives IRQ0 as one edge (pulse) per rising edge of OUT.
"""
from __future__ import annotations

from typing import Callable

from vmm.bus import IrqLine
from vmm.clock import Clock
from vmm.snapshot.state import PlainState

PIT_HZ = 1_193_182
NS_PER_S = 1_000_000_000

CONTROL_PORT = 3
READ_BACK = 3
ACCESS_LATCH, ACCESS_LOBYTE, ACCESS_HIBYTE, ACCESS_LOHI = 0, 1, 2, 3
READ_BACK_NO_COUNT = 0x20
READ_BACK_NO_STATUS = 0x10
STATUS_OUT = 0x80
STATUS_NULL_COUNT = 0x40


def ticks_to_ns(ticks: int) -> int:
    """The first instant (ns, rounded up) at which ``ticks`` CLK periods have fully elapsed."""
    return -(-ticks * NS_PER_S // PIT_HZ)


def ns_to_ticks(ns: int) -> int:
    """CLK periods fully elapsed in ``ns`` (rounded down); the inverse of ``ticks_to_ns``."""
    return ns * PIT_HZ // NS_PER_S


def _square_wave_count(n: int, phase: int) -> int:
    """Mode 3 count ``phase`` CLKs into a period: decrements by 2; an odd N loses 1 in the high
    half's first CLK and 3 in the low half's first CLK (datasheet mode 3, odd counts)."""
    high = (n + 1) // 2
    low_half = phase >= high
    elapsed = phase - high if low_half else phase
    if elapsed == 0:
        return n
    if n % 2 == 0:
        return n - 2 * elapsed
    return n - 1 - 2 * elapsed if low_half else n + 1 - 2 * elapsed


class PitCounter(PlainState):
    """One 8254 counter with GATE held high (GATE2 would come from port 0x61, not modelled).

    The count register is loaded into the counting element at the instant the count is written
    (QEMU's convention; the datasheet's extra loading CLK is not modelled), and counting is
    binary: the BCD bit is stored and read back in the status byte but otherwise ignored.
    Modes 0, 2 and 3 are exact. Mode 4 is mode 0 with OUT low for the CLK after terminal count.
    Modes 1 and 5 wait for a GATE trigger that never comes: their count holds, OUT stays high.
    A new count in mode 2 or 3 restarts the period at once instead of at the next reload.
    """
    STATE = ("control", "initial", "start_ns", "edges_taken", "_held", "_low_byte", "_read_high",
             "_count_latch", "_status_latch")

    def __init__(self) -> None:
        self.control = ACCESS_LOHI << 4
        self.initial = 0
        self.start_ns: int | None = None
        self.edges_taken = 0
        self._held = 0
        self._low_byte: int | None = None
        self._read_high = False
        self._count_latch: list[int] = []
        self._status_latch: int | None = None

    @property
    def mode(self) -> int:
        mode = (self.control >> 1) & 7
        return mode - 4 if mode >= 6 else mode

    @property
    def access(self) -> int:
        return (self.control >> 4) & 3

    def program(self, control: int, now: int) -> None:
        """A control word: counting stops and OUT goes to its initial state until a new count."""
        self._held = self.count(now)
        self.control = control & 0x3F
        self.start_ns = None
        self._low_byte = None
        self._read_high = False
        self._count_latch = []
        self._status_latch = None

    def write_count(self, value: int, now: int) -> None:
        access = self.access
        if access == ACCESS_LOHI and self._low_byte is None:
            self._low_byte = value
            if self.mode == 0:
                self._held, self.start_ns = self.count(now), None
            return
        if access == ACCESS_LOHI:
            value, self._low_byte = self._low_byte | value << 8, None
        elif access == ACCESS_HIBYTE:
            value <<= 8
        self._load(value or 0x10000, now)

    def _load(self, initial: int, now: int) -> None:
        self.initial = initial
        self.start_ns = now
        self.edges_taken = 0

    def read_byte(self, now: int) -> int:
        if self._status_latch is not None:
            status, self._status_latch = self._status_latch, None
            return status
        if self._count_latch:
            return self._count_latch.pop(0)
        count = self.count(now)
        if self.access == ACCESS_LOHI:
            high, self._read_high = self._read_high, not self._read_high
            return count >> 8 if high else count & 0xFF
        return count >> 8 if self.access == ACCESS_HIBYTE else count & 0xFF

    def latch_count(self, now: int) -> None:
        """Counter latch command; a second latch before the first is read is ignored."""
        if self._count_latch:
            return
        count = self.count(now)
        self._count_latch = {ACCESS_LOBYTE: [count & 0xFF], ACCESS_HIBYTE: [count >> 8]}.get(
            self.access, [count & 0xFF, count >> 8])

    def latch_status(self, now: int) -> None:
        if self._status_latch is None:
            null_count = STATUS_NULL_COUNT if self.start_ns is None else 0
            self._status_latch = (STATUS_OUT if self.out(now) else 0) | null_count | self.control

    def count(self, now: int) -> int:
        """The 16-bit value the counting element holds at ``now``."""
        if self.start_ns is None:
            return self._held
        mode = self.mode
        if mode in (1, 5):
            return self.initial & 0xFFFF
        elapsed = ns_to_ticks(now - self.start_ns)
        if mode == 2:
            return (self.initial - elapsed % self.initial) & 0xFFFF
        if mode == 3:
            return _square_wave_count(self.initial, elapsed % self.initial) & 0xFFFF
        return (self.initial - elapsed) & 0xFFFF

    def out(self, now: int) -> bool:
        """The OUT pin at ``now``."""
        mode = self.mode
        if self.start_ns is None:
            return mode != 0
        elapsed = ns_to_ticks(now - self.start_ns)
        if mode == 0:
            return elapsed >= self.initial
        if mode == 2:
            return elapsed % self.initial != self.initial - 1
        if mode == 3:
            return elapsed % self.initial < (self.initial + 1) // 2
        return mode != 4 or elapsed != self.initial

    def edges_by(self, now: int) -> int:
        """How many rising edges OUT has made between the count load and ``now``."""
        first, period = self._edge_schedule()
        if first is None:
            return 0
        elapsed = ns_to_ticks(now - self.start_ns)
        if elapsed < first:
            return 0
        return 1 if period is None else 1 + (elapsed - first) // period

    def edge_ns(self, k: int) -> int | None:
        """Virtual time of the k-th (1-based) rising edge of OUT after the load, or None."""
        first, period = self._edge_schedule()
        if first is None or (period is None and k > 1):
            return None
        return self.start_ns + ticks_to_ns(first + (k - 1) * (period or 0))

    def _edge_schedule(self) -> tuple[int | None, int | None]:
        """(CLK of the first OUT rising edge, CLKs between edges or None for a one-shot)."""
        mode = self.mode
        if self.start_ns is None or mode in (1, 5):
            return None, None
        if mode == 0:
            return self.initial, None
        if mode == 4:
            return self.initial + 1, None
        return self.initial, self.initial


class Pit8254:
    """The three counters behind one 4-port window; counter 0's OUT is IRQ0.

    Power-on state (undefined in the datasheet, chosen here): every counter unprogrammed, reading
    0, lobyte/hibyte access, mode 0, no IRQ0 deadline. Reading the control port returns 0xFF.
    Only the low byte of a wider access is used. Read-back (0xC0-0xFF) is supported.
    """

    name = "pit8254"

    def __init__(self, clock: Clock, irq0: IrqLine) -> None:
        self._clock = clock
        self._irq0 = irq0
        self.counters = (PitCounter(), PitCounter(), PitCounter())
        self.on_reconfigure: Callable[[], None] | None = None  # told after every programming write

    def save_state(self) -> dict:
        return {"counters": [counter.save_state() for counter in self.counters]}

    def load_state(self, state: dict) -> None:
        for counter, saved in zip(self.counters, state["counters"], strict=True):
            counter.load_state(saved)

    def counting(self) -> bool:
        """Whether any counter is running, i.e. whether the guest could observe time passing."""
        return any(counter.start_ns is not None for counter in self.counters)

    def next_deadline_ns(self) -> int | None:
        """Virtual time of IRQ0's next rising edge (may already be past), None if none pending."""
        counter = self.counters[0]
        return counter.edge_ns(counter.edges_taken + 1)

    def update(self) -> None:
        """Deliver one IRQ0 edge if any deadline passed; missed edges coalesce into that one."""
        counter = self.counters[0]
        edges = counter.edges_by(self._clock.now_ns())
        if edges > counter.edges_taken:
            counter.edges_taken = edges
            self._irq0.pulse()

    def read(self, offset: int, size: int) -> int:
        if offset == CONTROL_PORT:
            return 0xFF
        return self.counters[offset].read_byte(self._clock.now_ns())

    def write(self, offset: int, size: int, value: int) -> None:
        """Edges due before the write are delivered first, so reprogramming never loses one."""
        self.update()
        now = self._clock.now_ns()
        value &= 0xFF
        if offset != CONTROL_PORT:
            self.counters[offset].write_count(value, now)
        elif value >> 6 == READ_BACK:
            self._read_back(value, now)
        elif (value >> 4) & 3 == ACCESS_LATCH:
            self.counters[value >> 6].latch_count(now)
        else:
            self.counters[value >> 6].program(value, now)
        if self.on_reconfigure is not None:
            self.on_reconfigure()

    def _read_back(self, command: int, now: int) -> None:
        for index, counter in enumerate(self.counters):
            if not command & (2 << index):
                continue
            if not command & READ_BACK_NO_COUNT:
                counter.latch_count(now)
            if not command & READ_BACK_NO_STATUS:
                counter.latch_status(now)
