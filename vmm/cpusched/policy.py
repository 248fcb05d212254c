"""Proportional-share CPU scheduling with VMware ESX's resource controls: shares, reservation and
limit per VM, on one physical CPU. Pure policy: it never runs a guest; the dispatcher
(dispatch.py) asks it whom to run and for how long, and tells it what happened.

Units. The physical CPU is the one Unicorn runs at a time; its time is the machine's virtual
time, 1 ns per guest instruction (vmm/clock.py's ``InstructionClock``), so the CPU's capacity is
``CAPACITY_MHZ`` = 1000 MHz: a million guest instructions per virtual millisecond. Reservations
and limits are in MHz of that CPU, as in ESX (100 MHz = a tenth of it); shares are relative
weights (ESX's "normal" is 1000 per vCPU).

Entitlement. Among the VMs that demand the CPU (awake and not finished) each is entitled to a
rate between its reservation and its limit, proportional to its shares: max-min fair
water-filling, the rate ESX's resource pools compute, ``entitlements()``. Reservations are
honoured first (admission refuses reservations that exceed the CPU), limits cap.

Dispatch. Stride scheduling by virtual time (Waldspurger & Weihl): each VM has a pass that
advances by the time it ran over its entitlement; the demanding VM with the smallest pass runs
next, for a quantum. A VM that wakes rejoins no further back than ``WAKE_CREDIT`` behind the
others (it cannot bank the time it slept, but it runs ahead of a CPU hog at once), and the
running VM's quantum ends when a sleeper's timer is due, so a woken VM waits for no quantum.
A limit is a token bucket: a VM runs only on tokens earned at its limit's rate (at most one
quantum's burst), so over any window it receives at most limit x time + one quantum, and the
CPU idles rather than exceed it.
"""
from __future__ import annotations

from dataclasses import dataclass

CAPACITY_MHZ = 1000.0          # guest instructions per virtual microsecond, x1000: 1 ns each
QUANTUM_NS = 1_000_000         # one grant: 1 ms of virtual time, a million instructions
MIN_GRANT_NS = 50_000          # a limited VM waits until its bucket holds this much
WAKE_CREDIT = QUANTUM_NS       # how far behind the others a woken VM may rejoin (in pass units)
DEFAULT_SHARES = 1000          # ESX's "normal" shares for one vCPU


@dataclass(frozen=True)
class Controls:
    """ESX's three controls for one VM: shares (weight), reservation and limit in MHz."""
    shares: int = DEFAULT_SHARES
    reservation: float = 0.0
    limit: float | None = None

    def check(self, name: str) -> None:
        if self.shares <= 0:
            raise ValueError(f"{name}: shares must be positive (got {self.shares})")
        if not 0 <= self.reservation <= CAPACITY_MHZ:
            raise ValueError(f"{name}: a reservation is 0 to {CAPACITY_MHZ:g} MHz "
                             f"(got {self.reservation:g})")
        if self.limit is not None and not 0 < self.limit <= CAPACITY_MHZ:
            raise ValueError(f"{name}: a limit is above 0 and at most {CAPACITY_MHZ:g} MHz "
                             f"(got {self.limit:g})")
        if self.limit is not None and self.limit < self.reservation:
            raise ValueError(f"{name}: the limit ({self.limit:g} MHz) is below the reservation "
                             f"({self.reservation:g} MHz)")


def admit(controls: dict[str, Controls]) -> None:
    """ESX's admission control: each VM's controls make sense and the reservations fit the CPU."""
    for name, control in controls.items():
        control.check(name)
    reserved = sum(c.reservation for c in controls.values())
    if reserved > CAPACITY_MHZ:
        raise ValueError(f"the reservations add up to {reserved:g} MHz, more than the CPU's "
                         f"{CAPACITY_MHZ:g} MHz")


def entitlements(controls: dict, capacity: float = CAPACITY_MHZ) -> dict:
    """Each VM's entitled rate (MHz): ``clamp(level x shares, reservation, limit)`` with the one
    level at which the rates add up to the capacity (or every VM at its limit, if the limits
    add up to less). Water-filling by bisection on the level; exact to well below 1 Hz."""
    if not controls:
        return {}
    cap = {k: c.limit if c.limit is not None else capacity for k, c in controls.items()}
    rate = lambda level: {k: min(cap[k], max(c.reservation, level * c.shares))
                          for k, c in controls.items()}
    if sum(cap.values()) <= capacity:
        return cap
    low, high = 0.0, max(cap[k] / c.shares for k, c in controls.items())
    for _ in range(100):
        level = (low + high) / 2
        if sum(rate(level).values()) > capacity:
            high = level
        else:
            low = level
    return rate(low)
