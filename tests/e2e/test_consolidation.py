"""Several VMs on one CPU under the proportional-share scheduler (vmm/cpusched), with shipped
guests: shares honoured in guest instructions, an interactive VM served when its timer wakes it
beside a CPU hog, a limit that holds, every VM's output equal to its solo run, and the same
schedule under both hypervisors. Everything is judged in virtual time (instructions), never
wall time."""
from __future__ import annotations

import json

import pytest
from conftest import EXPECTED, trapvisor

from hypervisors.images import resolve
from hypervisors.micro.hypervisor import MicroHypervisor
from hypervisors.monolithic import MonolithicHypervisor, run_side_by_side
from vmm.cpusched.dispatch import dispatch
from vmm.cpusched.policy import QUANTUM_NS, Controls
from vmm.cpusched.scheduler import ProportionalShare
from vmm.run_state import RunState

HOG_INSTRUCTIONS = 44_000_000        # guests/hog.asm: 4 M rounds of 11 instructions, and a few
TOLERANCE = 0.05


class Machines:
    """Monolithic VMs built for one test, each collecting its own serial output."""

    def __init__(self, engine: str):
        self.engine = engine
        self.vms: list[tuple[MonolithicHypervisor, object]] = []
        self.output: list[list[bytes]] = []

    def add(self, guest: str) -> MonolithicHypervisor:
        chunks: list[bytes] = []
        hypervisor = MonolithicHypervisor(engine=self.engine, sink=chunks.append, timeout=120)
        self.vms.append((hypervisor, resolve(guest, 32 << 20)))
        self.output.append(chunks)
        return hypervisor

    def text(self, index: int) -> str:
        return b"".join(self.output[index]).decode()

    def close(self) -> None:
        for hypervisor, _ in self.vms:
            hypervisor.close()


@pytest.fixture
def machines(request):
    built: list[Machines] = []

    def make(engine: str = "native") -> Machines:
        built.append(Machines(engine))
        return built[-1]
    yield make
    for group in built:
        group.close()


def booted(group: Machines, controls: dict[str, Controls]) -> tuple[ProportionalShare, list]:
    scheduler = ProportionalShare(controls)
    clients = []
    for (hypervisor, image), name in zip(group.vms, controls):
        hypervisor.boot(image)
        clients.append(hypervisor.client(name))
    return scheduler, clients


@pytest.mark.parametrize("engine", ["native", "trap"])
def test_shares_are_honoured_in_guest_instructions_and_outputs_match_solo(machines, engine):
    group = machines(engine)
    hogs = [group.add("hog") for _ in range(3)]
    shares = {"1:hog": Controls(1000), "2:hog": Controls(2000), "3:hog": Controls(4000)}
    scheduler, clients = booted(group, shares)
    horizon = 70_000_000          # 70 ms: all three still want the CPU (the 4000 one ends ~77 ms)
    dispatch(clients, scheduler, until=horizon)
    retired = [hog.vcpu.instructions for hog in hogs]
    for count, parts in zip(retired, (1, 2, 4)):
        assert count / sum(retired) == pytest.approx(parts / 7, rel=TOLERANCE), retired
    for account in scheduler.accounts.values():
        assert 1 - TOLERANCE <= scheduler.received_over_entitled(account) <= 1 + TOLERANCE
    dispatch(clients, scheduler)
    expected = (EXPECTED / "hog.txt").read_text()
    for index, hog in enumerate(hogs):
        assert hog.vcpu.state is RunState.EXITED and hog.vcpu.status == 0
        assert group.text(index) == expected
    ended = [a.ended_at for a in scheduler.accounts.values()]
    assert ended[2] < ended[1] < ended[0], "the VM with the most shares finishes first"


def test_an_interactive_vm_gets_the_cpu_as_its_timer_wakes_it_beside_a_hog(machines):
    group = machines()
    group.add("hog")
    ticker = group.add("interrupts")
    scheduler = ProportionalShare({"1:hog": Controls(4000), "2:interrupts": Controls(1000)})
    results = run_side_by_side(group.vms, scheduler)
    assert [r.state for r in results] == [RunState.EXITED] * 2
    assert group.text(0) == (EXPECTED / "hog.txt").read_text()
    assert group.text(1) == (EXPECTED / "interrupts.txt").read_text()
    account = scheduler.accounts["2:interrupts"]
    assert account.wakeups >= 50                        # one per timer tick it slept for
    assert account.max_wake_latency < 1_000             # granted within 1 µs of virtual time
    hog_end = scheduler.accounts["1:hog"].ended_at
    assert hog_end < HOG_INSTRUCTIONS * 1.01, "the ticker's wake-ups cost the hog almost nothing"
    assert ticker.vcpu.instructions == results[1].instructions


def test_a_limit_holds_while_another_vm_could_use_the_cpu_and_after_it_ends(machines):
    group = machines()
    capped, free = group.add("hog"), group.add("hog")
    scheduler, clients = booted(group, {"1:hog": Controls(4000, limit=100),
                                        "2:hog": Controls(1000)})
    dispatch(clients, scheduler, until=40_000_000)
    assert capped.vcpu.instructions <= 0.1 * scheduler.now + QUANTUM_NS
    assert capped.vcpu.instructions >= 0.1 * scheduler.now - QUANTUM_NS
    assert free.vcpu.instructions == scheduler.now - capped.vcpu.instructions
    dispatch(clients, scheduler)              # the free one ends; the capped one stays at 10%
    account = scheduler.accounts["1:hog"]
    assert account.received <= 0.1 * account.ended_at + QUANTUM_NS
    assert scheduler.idle_ns > 0 and group.text(0) == (EXPECTED / "hog.txt").read_text()


def test_micro_runs_the_same_schedule_as_monolithic(machines):
    controls = {"1:hog": Controls(1000), "2:interrupts": Controls(2000), "3:hello": Controls()}
    group = machines()
    for name in ("hog", "interrupts", "hello"):
        group.add(name)
    monolithic = ProportionalShare(controls)
    run_side_by_side(group.vms, monolithic)
    micro_scheduler = ProportionalShare(controls)
    hypervisor = MicroHypervisor(engine="native", timeout=120)
    output: dict[str, list[bytes]] = {}
    try:
        children = [(hypervisor.create_partition(name, output.setdefault(name, []).append),
                     resolve(name, 32 << 20)) for name in ("hog", "interrupts", "hello")]
        results = hypervisor.run_all(children, micro_scheduler)
    finally:
        hypervisor.close()
    assert all(r.state is RunState.EXITED for r in results)
    for index, name in enumerate(("hog", "interrupts", "hello")):
        assert b"".join(output[name]).decode() == group.text(index)
    for name, account in monolithic.accounts.items():
        twin = micro_scheduler.accounts[name]
        assert (twin.received, twin.ended_at, twin.wakeups, twin.grants) == \
               (account.received, account.ended_at, account.wakeups, account.grants)


def test_the_cli_runs_guests_side_by_side_with_per_vm_stats_and_traces(tmp_path):
    trace = tmp_path / "trace.jsonl"
    run = trapvisor("run", "hog", "hello", "--engine", "trap", "--shares", "1000,2000",
                    "--stats", "--trace", str(trace))
    assert run.returncode == 0, run.stderr
    assert "[1:hog] checksum 0x5f36a1e1 ... ok\n" in run.stdout
    assert "[2:hello] Hello from a trapvisor guest!\n" in run.stdout
    for table in ("all VMs", "VM 1 (hog)", "VM 2 (hello)"):
        assert f"Analyze events for {table}, all VCPUs:" in run.stderr
    rows = {line.split()[0]: line.split() for line in run.stderr.splitlines()
            if line.startswith(("1:hog ", "2:hello "))}
    assert rows["1:hog"][1] == "1000" and rows["2:hello"][1] == "2000"
    records = [json.loads(line) for line in trace.read_text().splitlines()]
    assert {(r["vm_id"], r["vm_name"]) for r in records} == {(1, "hog"), (2, "hello")}
    per_vm = {n: sum(r["vm_id"] == n for r in records) for n in (1, 2)}
    assert per_vm == {1: int(rows["1:hog"][5]), 2: int(rows["2:hello"][5])}


@pytest.mark.parametrize("args, says", [
    (["hello", "hello", "--shares", "1,2,3"], "--shares has 3 values for 2 guests"),
    (["hello", "hello", "--reservation", "600"], "the reservations add up to 1200 MHz"),
    (["hello", "--limit", "50", "--reservation", "80"], "below the reservation"),
    (["hello", "hello", "--shares", "0,1"], "shares must be positive"),
    (["hello", "--shares", "x"], "not a share count: 'x'"),
    (["hello", "hello", "--wall-clock"], "--wall-clock run one guest alone"),
])
def test_bad_scheduling_controls_are_one_line_errors(args, says):
    run = trapvisor("run", *args)
    assert run.returncode == 2 and says in run.stderr, run.stderr
    assert "Traceback" not in run.stderr
