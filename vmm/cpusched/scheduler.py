"""The proportional-share scheduler's state: one account per VM (its pass, its limit's token
bucket, the CPU time it received and was entitled to, whether it sleeps) and the machine's
virtual time. ``pick`` says whom to run next and for how long (a ``Grant``) or how long the CPU
idles (an ``Idle``); ``charge`` and ``idle`` move time on. The policy is explained in policy.py.

Everything here is in ns of machine virtual time (1 ns = one guest instruction of the CPU);
nothing reads a host clock, so a schedule is a function of the guests' own execution.
"""
from __future__ import annotations

from dataclasses import dataclass

from vmm.cpusched.policy import (
    CAPACITY_MHZ,
    MIN_GRANT_NS,
    QUANTUM_NS,
    WAKE_CREDIT,
    Controls,
    admit,
    entitlements,
)


@dataclass(frozen=True)
class Grant:
    """Run VM ``name`` for at most ``quantum`` ns (instructions)."""
    name: str
    quantum: int


@dataclass(frozen=True)
class Idle:
    """No VM may run now: the CPU idles until ``until`` ns (a timer is due, a bucket refills)."""
    until: int


@dataclass(frozen=True)
class Slice:
    """What a VM did with a grant: ns it ran, ns it now sleeps for (HLT until a timer), ended."""
    ran: int
    sleep: int | None = None
    done: bool = False


@dataclass
class Account:
    """One VM's standing with the scheduler."""
    name: str
    controls: Controls
    quantum: int
    pass_: float = 0.0
    received: int = 0             # ns of CPU it ran
    entitled: float = 0.0         # ns of CPU it was entitled to while it demanded the CPU
    demanded: int = 0             # ns it was awake (runnable)
    tokens: float = 0.0           # its limit's bucket, ns of CPU
    wake_at: int | None = None    # asleep until then
    woke_at: int | None = None    # woke then and has not run since
    ended_at: int | None = None
    grants: int = 0
    wakeups: int = 0
    max_wake_latency: int = 0     # ns from a wake-up to its grant, at worst

    @property
    def asleep(self) -> bool:
        return self.wake_at is not None

    @property
    def done(self) -> bool:
        return self.ended_at is not None

    def eligible(self) -> bool:
        """May run now: its limit (if any) has left it enough CPU time in the bucket."""
        limit = self.controls.limit
        return limit is None or self.tokens >= min(MIN_GRANT_NS, self.quantum)


class ProportionalShare:
    """ESX-style shares/reservation/limit over stride scheduling, for VMs named in order."""

    def __init__(self, controls: dict[str, Controls], quantum: int = QUANTUM_NS):
        admit(controls)
        self.quantum = quantum
        self.accounts = {name: Account(name, c, quantum, tokens=quantum)
                         for name, c in controls.items()}
        self.now = 0
        self.idle_ns = 0
        self.switches = 0
        self._last: str | None = None
        self._rates: tuple[frozenset, dict] = (frozenset(), {})

    # ----- whom to run ---------------------------------------------------------------------------
    def demanding(self) -> list[Account]:
        return [a for a in self.accounts.values() if not a.done and not a.asleep]

    def rates(self) -> dict[str, float]:
        """The entitled rate (MHz) of each demanding VM, recomputed when that set changes."""
        names = frozenset(a.name for a in self.demanding())
        if names != self._rates[0]:
            self._rates = (names, entitlements({n: self.accounts[n].controls for n in names}))
        return self._rates[1]

    def pick(self) -> Grant | Idle | None:
        """The next grant, an idle period, or None once every VM has ended."""
        self._wake_due()
        live = [a for a in self.accounts.values() if not a.done]
        if not live:
            return None
        ready = [a for a in live if not a.asleep and a.eligible()]
        wakes = [a.wake_at for a in live if a.asleep]
        if not ready:
            refills = [self.now + self._refill_ns(a) for a in live if not a.asleep]
            return Idle(min(wakes + refills))
        chosen = min(ready, key=lambda a: a.pass_)   # ties: the earlier VM on the command line
        quantum = self.quantum
        if chosen.controls.limit is not None:
            quantum = min(quantum, int(chosen.tokens))
        if wakes:   # a sleeper's timer ends the quantum: the woken VM never waits for one
            quantum = min(quantum, min(wakes) - self.now)
        return Grant(chosen.name, max(1, quantum))

    def _refill_ns(self, account: Account) -> int:
        """How long until a limited VM's bucket is full again (it then runs a whole quantum)."""
        missing = self.quantum - account.tokens
        return max(1, -int(-missing * CAPACITY_MHZ // account.controls.limit))

    # ----- time moves on -------------------------------------------------------------------------
    def charge(self, name: str, used: Slice) -> None:
        """VM ``name`` ran ``used.ran`` ns of a grant; then it went to sleep or ended, or not."""
        account = self.accounts[name]
        if account.woke_at is not None:
            account.max_wake_latency = max(account.max_wake_latency,
                                           self.now - account.woke_at)
            account.woke_at = None
        if self._last != name:
            self.switches += 1
            self._last = name
        account.grants += 1
        rate = self.rates()[name]
        account.pass_ += used.ran * CAPACITY_MHZ / rate
        account.received += used.ran
        account.tokens -= used.ran
        self._advance(self.now + used.ran)
        if used.done:
            account.ended_at = self.now
        elif used.sleep is not None:
            account.wake_at = self.now + used.sleep

    def idle(self, until: int) -> None:
        """Nothing ran from now to ``until``."""
        if until > self.now:
            self.idle_ns += until - self.now
            self._last = None
            self._advance(until)

    def _advance(self, to: int) -> None:
        """Virtual time moves to ``to``: the demanding VMs accrue their entitlement and the
        limited VMs' buckets refill (to one quantum at most)."""
        span = to - self.now
        for name, rate in self.rates().items():
            account = self.accounts[name]
            account.entitled += span * rate / CAPACITY_MHZ
            account.demanded += span
        for account in self.accounts.values():
            limit = account.controls.limit
            if limit is not None and not account.done:
                account.tokens = min(self.quantum, account.tokens + span * limit / CAPACITY_MHZ)
        self.now = to

    def _wake_due(self) -> None:
        """Sleepers whose timer is due rejoin, at most WAKE_CREDIT behind the VMs that ran."""
        due = [a for a in self.accounts.values() if a.asleep and a.wake_at <= self.now]
        for account in due:
            others = [a.pass_ for a in self.demanding()]
            if others:
                account.pass_ = max(account.pass_, min(others) - WAKE_CREDIT)
            account.wake_at, account.woke_at = None, account.wake_at   # latency from the due time
            account.wakeups += 1

    # ----- what each VM got ----------------------------------------------------------------------
    def lifetime(self, account: Account) -> int:
        return (account.ended_at if account.done else self.now) or 1

    def share(self, account: Account) -> tuple[float, float]:
        """(received, entitled) as fractions of the CPU over the VM's lifetime."""
        life = self.lifetime(account)
        return account.received / life, account.entitled / life

    def received_over_entitled(self, account: Account) -> float | None:
        return account.received / account.entitled if account.entitled > 0 else None
