"""Time sources injected into devices, so no device reads the host clock itself.

``InstructionClock`` is the guest's default time: retired instructions (Unicorn counts them) plus
time skipped while halted. ``WallClock`` is host monotonic time (``--wall-clock``).
``VirtualClock`` is a settable clock for driving devices by hand, as crosvm's ``FakeClock`` does
in its PIT tests.
"""
from __future__ import annotations

import time
from typing import Callable, Protocol


class Clock(Protocol):
    """Anything that tells the time in nanoseconds on a monotonic scale."""

    def now_ns(self) -> int: ...


class VirtualClock:
    """Guest virtual time: starts at 0 and only moves when told to, never backwards."""

    def __init__(self) -> None:
        self._now = 0

    def now_ns(self) -> int:
        return self._now

    def advance(self, ns: int) -> None:
        if ns < 0:
            raise ValueError(f"virtual time cannot go back (advance by {ns} ns)")
        self._now += ns

    def set(self, ns: int) -> None:
        if ns < self._now:
            raise ValueError(f"virtual time cannot go back from {self._now} to {ns} ns")
        self._now = ns


class WallClock:
    """Host monotonic time elapsed since this clock was created."""

    def __init__(self, source: Callable[[], int] = time.monotonic_ns) -> None:
        self._source = source
        self._origin = source()

    def now_ns(self) -> int:
        return self._source() - self._origin


class InstructionClock:
    """Virtual time: retired guest instructions times ns_per_insn, plus time skipped in HLT."""

    def __init__(self, cpu, ns_per_insn: int = 1):
        self.cpu = cpu
        self.ns_per_insn = ns_per_insn
        self.base_ns = 0
        self.running = False

    def now_ns(self) -> int:
        live = self.cpu.executed() if self.running else 0
        return self.base_ns + live * self.ns_per_insn

    def retire(self, instructions: int) -> None:
        self.base_ns += instructions * self.ns_per_insn

    def budget_until(self, deadline_ns: int) -> int:
        return max(1, -(-(deadline_ns - self.base_ns) // self.ns_per_insn))

    def skip_to(self, deadline_ns: int) -> None:
        self.base_ns = max(self.base_ns, deadline_ns)
