"""The proportional-share CPU scheduler (vmm/cpusched) on this machine: part of benchmark `vms`
(vms.py calls ``measure``), as issue 14 asks for one section of many-VM figures.

Fairness: three CPU-bound VMs (benchmarks/guests/spin.asm, which never ends) with shares
1000:2000:4000 run under the monolithic hypervisor for 10 s of the machine's virtual time (1 s
with --quick; 1 ns per guest instruction), and each VM's CPU received over its entitlement is a
record, metric ``share_received_over_entitled`` (goal: every value in 0.95-1.05). Received is
counted in guest instructions, so the figure does not depend on this machine's speed or load.

Context switch: two such VMs run the same number of instructions twice in one repetition, with
a 10,000-instruction quantum (a VM switch per grant) and with a quantum of half the run (two
grants); the switch cost is the difference of the two runs' times over the difference of the
switch counts: scheduler decision, leaving and re-entering Unicorn, the vCPU loop's slice
bookkeeping; under micro also the hand-off between the dispatcher and the child's vCPU thread.
The times are this process's CPU time (user + system, every thread), not wall time: on the
shared machine wall time includes waiting for a core, 3-4x the work at a load average of 9;
the wall-time figures are kept in the record beside them.
"""
from __future__ import annotations

import statistics
import time

from benchmarks.harness import BENCH_GUESTS, RAM, BenchmarkError
from benchmarks.loops import Context
from benchmarks.records import Section, record, with_spread
from hypervisors.images import resolve
from hypervisors.monolithic import MonolithicHypervisor
from vmm.cpusched.dispatch import ThreadedClient, VcpuClient, dispatch
from vmm.cpusched.policy import Controls
from vmm.cpusched.scheduler import ProportionalShare

SHARES = (1000, 2000, 4000)
VIRTUAL_NS = {True: 1_000_000_000, False: 10_000_000_000}
SWITCH_RUN = {True: 4_000_000, False: 20_000_000}     # instructions per timed run
SMALL_QUANTUM = 10_000
GOAL = (0.95, 1.05)
ENGINE = "native"


def spin_image():
    return resolve(str(BENCH_GUESTS / "spin.asm"), RAM)


class Spinners:
    """``count`` spin VMs booted under one hypervisor, as scheduler clients."""

    def __init__(self, hypervisor: str, count: int):
        self.hypervisor = hypervisor
        self.micro = None
        image = spin_image()
        names = [f"{n}:spin" for n in range(1, count + 1)]
        if hypervisor == "micro":
            from hypervisors.micro.hypervisor import MicroHypervisor
            self.micro = MicroHypervisor(engine=ENGINE, ram_size=RAM)
            partitions = [self.micro.create_partition(name) for name in names]
            for partition in partitions:
                partition.boot(image)
            self.vcpus = [p.vcpu for p in partitions]
            self.clients = [ThreadedClient(VcpuClient(name, p.vcpu, p.failed))
                            for name, p in zip(names, partitions)]
        else:
            self.vms = [MonolithicHypervisor(engine=ENGINE, ram_size=RAM) for _ in names]
            for vm in self.vms:
                vm.boot(image)
            self.vcpus = [vm.vcpu for vm in self.vms]
            self.clients = [vm.client(name) for vm, name in zip(self.vms, names)]
        self.names = names

    def close(self) -> None:
        if self.micro is not None:
            for client in self.clients:
                client.close()
            self.micro.close()
        else:
            for vm in self.vms:
                vm.close()


def fairness(ctx: Context, section: Section) -> None:
    virtual = VIRTUAL_NS[ctx.quick]
    ctx.progress(f"fairness: 3 spin VMs, shares {':'.join(map(str, SHARES))}, "
                 f"{virtual / 1e9:g} s of virtual time")
    spinners = Spinners("monolithic", len(SHARES))
    try:
        scheduler = ProportionalShare({name: Controls(shares)
                                       for name, shares in zip(spinners.names, SHARES)})
        started = time.perf_counter()
        dispatch(spinners.clients, scheduler, until=virtual)
        seconds = time.perf_counter() - started
        if any(v.stopping for v in spinners.vcpus):
            raise BenchmarkError("a spin VM ended: it must want the CPU throughout")
        for (name, account), vcpu in zip(scheduler.accounts.items(), spinners.vcpus):
            received, entitled = scheduler.share(account)
            ratio = scheduler.received_over_entitled(account)
            section.records.append(record(
                section.name, ENGINE, "monolithic", "share_received_over_entitled", ratio, "ratio",
                vm=name, shares=account.controls.shares, instructions=vcpu.instructions,
                received_share=received, entitled_share=entitled, virtual_seconds=virtual / 1e9,
                goal=list(GOAL), within_goal=GOAL[0] <= ratio <= GOAL[1],
                min=ratio, max=ratio, n=1))   # one run, exact: counted in guest instructions
            section.lines.append(
                f"    {name:<8} shares {account.controls.shares:>5}: received "
                f"{100 * received:6.2f}% of the CPU, entitled {100 * entitled:6.2f}%, ratio "
                f"{ratio:.4f} (goal {GOAL[0]}-{GOAL[1]})")
        section.lines.append(f"    {scheduler.switches} VM switches; {virtual / 1e9:g} s of "
                             f"virtual time took {seconds:.1f} s of wall time here")
    finally:
        spinners.close()


def switch_seconds(hypervisor: str, quantum: int, instructions: int) -> tuple[float, float, int]:
    """(CPU seconds, wall seconds, VM switches) to run ``instructions`` over two spin VMs at
    ``quantum``."""
    spinners = Spinners(hypervisor, 2)
    try:
        scheduler = ProportionalShare({name: Controls() for name in spinners.names}, quantum)
        cpu, wall = time.process_time(), time.perf_counter()
        dispatch(spinners.clients, scheduler, until=instructions)
        return time.process_time() - cpu, time.perf_counter() - wall, scheduler.switches
    finally:
        spinners.close()


def switch_cost(ctx: Context, section: Section, hypervisor: str) -> None:
    instructions = SWITCH_RUN[ctx.quick]
    samples, wall = [], []
    for rep in range(ctx.reps):
        ctx.progress(f"VM switch cost under {hypervisor}: repetition {rep + 1}/{ctx.reps}")
        small = switch_seconds(hypervisor, SMALL_QUANTUM, instructions)
        big = switch_seconds(hypervisor, instructions // 2, instructions)
        switches = small[2] - big[2]
        samples.append((small[0] - big[0]) / switches * 1e6)
        wall.append((small[1] - big[1]) / switches * 1e6)
    figure = with_spread(section.name, ENGINE, hypervisor, "vm_switch_us", samples, "us",
                         quantum_instructions=SMALL_QUANTUM, instructions=instructions,
                         clock="process CPU time", wall_us=wall)
    section.records.append(figure)
    value = "not measured: " + figure["reason"] if figure["value"] is None \
        else (f"{figure['value']:.1f} us CPU time (p10 {figure['p10']:.1f}, p90 "
              f"{figure['p90']:.1f}); wall {statistics.median(wall):.1f} us")
    section.lines.append(f"    VM switch under {hypervisor:<10} {value}")


def measure(ctx: Context, section: Section) -> None:
    """Fairness (1:2:4 shares) and the VM switch cost, into ``section``."""
    section.lines.append("  Proportional-share CPU scheduler: fairness (1:2:4 shares), VM switch")
    fairness(ctx, section)
    for hypervisor in ("monolithic", "micro"):
        if isinstance(ctx.hypervisors.get(hypervisor), str):
            section.lines.append(f"    VM switch under {hypervisor}: not measured: "
                                 f"{ctx.hypervisors[hypervisor]}")
            continue
        switch_cost(ctx, section, hypervisor)
