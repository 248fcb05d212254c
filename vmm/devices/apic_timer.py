"""The local APIC timer's counting element (Intel SDM Vol. 3A 11.5.4, "APIC Timer"): a 32-bit
down-counter fed by the bus clock through the Divide Configuration Register, one-shot or
periodic, whose count and expiries are computed from an injected clock, never from a running
timer. The local APIC (vmm.devices.lapic) owns the LVT entry that says where expiries go.
"""
from __future__ import annotations

from vmm.clock import Clock
from vmm.snapshot.state import PlainState

NS_PER_S = 1_000_000_000
BUS_HZ = NS_PER_S          # the timer's input clock: 1 GHz, as QEMU and KVM count it


def timer_divisor(dcr: int) -> int:
    """Divide Configuration Register bits 3,1:0 (SDM Figure 11-10): 000 -> 2 ... 110 -> 128,
    111 -> 1."""
    code = (dcr >> 1 & 4) | (dcr & 3)
    return 1 << ((code + 1) & 7)


class ApicTimer(PlainState):
    """Initial count, divide configuration and the running state. The count is loaded at the
    instant the initial count is written; ``periodic`` is the LVT timer mode, passed in by the
    caller at each question (a mode change restarts from the count reached, see ``restart``)."""
    STATE = ("initial_count", "dcr", "_start", "_from", "expiries_taken")

    def __init__(self, clock: Clock, bus_hz: int = BUS_HZ) -> None:
        self._clock = clock
        self.bus_hz = bus_hz
        self.initial_count = 0
        self.dcr = 0
        self._start: int | None = None
        self._from = 0                      # the count when the timer (re)started
        self.expiries_taken = 0

    @property
    def divisor(self) -> int:
        return timer_divisor(self.dcr)

    @property
    def running(self) -> bool:
        return self._start is not None

    def load(self, initial_count: int) -> None:
        """A write of the initial count: restart from it; 0 stops the timer."""
        self.initial_count = initial_count & 0xFFFFFFFF
        self.restart(self.initial_count)

    def set_divide(self, dcr: int, periodic: bool) -> None:
        """A new divider applies from now on: the count reached so far is kept."""
        count = self.current_count(periodic)
        self.dcr = dcr & 0xB
        self.restart(count)

    def restart(self, count: int) -> None:
        self._from = count
        self._start = self._clock.now_ns() if count else None
        self.expiries_taken = 0

    def _ticks(self, now: int) -> int:
        return (now - self._start) * self.bus_hz // (NS_PER_S * self.divisor)

    def _ticks_to_ns(self, ticks: int) -> int:
        return -(-ticks * self.divisor * NS_PER_S // self.bus_hz)

    def current_count(self, periodic: bool) -> int:
        """One-shot: counts down to 0 and stays; periodic: reloads from the initial count."""
        if self._start is None:
            return 0
        ticks = self._ticks(self._clock.now_ns())
        if ticks < self._from:
            return self._from - ticks
        if not periodic or not self.initial_count:
            return 0
        return self.initial_count - (ticks - self._from) % self.initial_count

    def _expiries_by(self, now: int, periodic: bool) -> int:
        ticks = self._ticks(now)
        if ticks < self._from:
            return 0
        if not periodic or not self.initial_count:
            return 1
        return 1 + (ticks - self._from) // self.initial_count

    def next_expiry_ns(self) -> int | None:
        """When the next not-yet-taken expiry is (may be past), or None when stopped."""
        if self._start is None:
            return None
        return self._start + self._ticks_to_ns(self._from
                                               + self.expiries_taken * self.initial_count)

    def take_expiries(self, periodic: bool) -> bool:
        """Whether an expiry passed since the last call (missed periods coalesce into one); a
        one-shot timer stops at 0 after its expiry."""
        if self._start is None:
            return False
        expiries = self._expiries_by(self._clock.now_ns(), periodic)
        if expiries <= self.expiries_taken:
            return False
        self.expiries_taken = expiries
        if not periodic:
            self._start = None
        return True
