"""The proportional-share scheduler without a CPU: fake VMs that consume their grants (a CPU hog,
a VM that works briefly and sleeps on a timer, one with a fixed amount of work)."""
from __future__ import annotations

import threading

import pytest

from vmm.cpusched.dispatch import ThreadedClient, dispatch
from vmm.cpusched.policy import CAPACITY_MHZ, QUANTUM_NS, Controls, admit, entitlements
from vmm.cpusched.scheduler import ProportionalShare, Slice

SECOND = 1_000_000_000


class Hog:
    """Uses every grant in full; with ``work`` it ends after that many ns of CPU."""

    def __init__(self, name: str, work: int | None = None):
        self.name, self.work, self.ran = name, work, 0

    def run_quantum(self, quantum: int) -> Slice:
        used = quantum if self.work is None else min(quantum, self.work - self.ran)
        self.ran += used
        return Slice(used, None, self.work is not None and self.ran >= self.work)


class Sleeper:
    """Works ``burst`` ns, then sleeps ``period`` ns (HLT until its next timer tick)."""

    def __init__(self, name: str, burst: int, period: int):
        self.name, self.burst, self.period, self.ran = name, burst, period, 0

    def run_quantum(self, quantum: int) -> Slice:
        assert quantum >= self.burst, "a woken VM got less than its burst"
        self.ran += self.burst
        return Slice(self.burst, self.period)


def run(controls: dict, clients: list, until: int = SECOND) -> ProportionalShare:
    scheduler = ProportionalShare(controls)
    dispatch(clients, scheduler, until)
    return scheduler


def test_entitlements_follow_shares_then_reservations_then_limits():
    rates = entitlements({"a": Controls(1000), "b": Controls(2000), "c": Controls(4000)})
    assert [rates[k] for k in "abc"] == pytest.approx([CAPACITY_MHZ * n / 7 for n in (1, 2, 4)])
    reserved = entitlements({"a": Controls(1000, reservation=600), "b": Controls(4000)})
    assert reserved["a"] == pytest.approx(600) and reserved["b"] == pytest.approx(400)
    limited = entitlements({"a": Controls(4000, limit=100), "b": Controls(), "c": Controls()})
    assert limited["a"] == pytest.approx(100) and limited["b"] == pytest.approx(450)
    capped = entitlements({"a": Controls(1000, limit=100), "b": Controls(1000, limit=200)})
    assert capped == {"a": 100, "b": 200}


@pytest.mark.parametrize("controls, says", [
    ({"a": Controls(0)}, "shares must be positive"),
    ({"a": Controls(reservation=1200)}, "a reservation is 0 to 1000 MHz"),
    ({"a": Controls(limit=0)}, "a limit is above 0"),
    ({"a": Controls(reservation=300, limit=200)}, "below the reservation"),
    ({"a": Controls(reservation=600), "b": Controls(reservation=500)}, "add up to 1100 MHz"),
])
def test_admission_refuses_controls_that_cannot_hold(controls, says):
    with pytest.raises(ValueError, match=says):
        admit(controls)


def test_three_hogs_get_the_cpu_in_proportion_to_their_shares():
    hogs = [Hog(name) for name in "abc"]
    scheduler = run({"a": Controls(1000), "b": Controls(2000), "c": Controls(4000)}, hogs)
    assert scheduler.now == SECOND and scheduler.idle_ns == 0
    for hog, parts in zip(hogs, (1, 2, 4)):
        assert hog.ran / SECOND == pytest.approx(parts / 7, rel=0.01)
        account = scheduler.accounts[hog.name]
        assert scheduler.received_over_entitled(account) == pytest.approx(1, abs=0.01)


def test_a_finished_vm_leaves_its_share_to_the_others():
    hogs = [Hog("a"), Hog("b", work=SECOND // 10)]
    scheduler = run({"a": Controls(1000), "b": Controls(1000)}, hogs)
    assert scheduler.accounts["b"].ended_at == pytest.approx(SECOND // 5, rel=0.01)
    assert hogs[0].ran == SECOND - SECOND // 10
    assert scheduler.received_over_entitled(scheduler.accounts["a"]) == pytest.approx(1, abs=0.01)


def test_a_hog_cannot_starve_a_vm_that_wakes_on_its_timer():
    hog, ticker = Hog("hog"), Sleeper("ticker", burst=20_000, period=700_000)
    scheduler = run({"hog": Controls(4000), "ticker": Controls(1000)}, [hog, ticker])
    account = scheduler.accounts["ticker"]
    assert account.wakeups == SECOND // 720_000 - 1    # every period: none lost to the hog
    assert account.max_wake_latency == 0
    assert hog.ran + ticker.ran == SECOND


def test_a_limit_holds_even_with_the_cpu_otherwise_idle():
    hog = Hog("capped")
    scheduler = run({"capped": Controls(limit=100)}, [hog])
    assert SECOND * 0.1 - QUANTUM_NS <= hog.ran <= SECOND * 0.1 + QUANTUM_NS
    assert scheduler.idle_ns == SECOND - hog.ran


def test_a_limited_vm_gives_the_rest_to_the_others():
    capped, other = Hog("capped"), Hog("other")
    run({"capped": Controls(4000, limit=250), "other": Controls(1000)}, [capped, other])
    assert capped.ran / SECOND == pytest.approx(0.25, abs=0.002)
    assert other.ran / SECOND == pytest.approx(0.75, abs=0.002)


def test_a_reservation_is_honoured_against_larger_shares():
    reserved, big = Hog("reserved"), Hog("big")
    run({"reserved": Controls(100, reservation=600), "big": Controls(4000)}, [reserved, big])
    assert reserved.ran / SECOND == pytest.approx(0.6, abs=0.002)


def test_a_vm_that_slept_cannot_bank_the_time_it_slept():
    early, late = Hog("early"), Hog("late")
    scheduler = ProportionalShare({"early": Controls(), "late": Controls()})
    scheduler.accounts["late"].wake_at = SECOND // 2       # asleep for the first half
    dispatch([early, late], scheduler, SECOND)
    assert late.ran == pytest.approx(SECOND // 4, abs=2 * QUANTUM_NS)


def test_threaded_clients_run_on_their_own_threads_one_at_a_time():
    running, seen = [], set()

    class Probe(Hog):
        def run_quantum(self, quantum):
            running.append(self.name)
            assert len(running) == 1, "two clients ran at once"
            seen.add((self.name, threading.current_thread().name))
            used = super().run_quantum(quantum)
            running.pop()
            return used
    clients = [ThreadedClient(Probe(name, work=SECOND // 100)) for name in "ab"]
    run({"a": Controls(), "b": Controls()}, clients)
    for client in clients:
        client.close()
    assert seen == {("a", "a"), ("b", "b")}
