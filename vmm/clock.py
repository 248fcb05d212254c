"""Time sources injected into devices, so no device reads the host clock itself.

``VirtualClock`` is guest time, advanced by the vCPU from executed instructions (crosvm's
``FakeClock`` plays the same role in its PIT tests); ``WallClock`` is host monotonic time.
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
