"""Servicing the parent partition while its children run (issue 14's scenario from Hyper-V: the
root OS is patched and rebooted, which "requires you to take all virtual machines offline"):
`trapvisor run A B C --hypervisor micro --service-parent-at-exit N`.

The children run side by side on the proportional-share scheduler (vmm/cpusched), in steps of
STEP_NS of virtual time, until one of them has taken N exits. Then each child still running is
parked as a snapshot (vmm/snapshot: its CPU, engine, RAM and chipset here, its device models'
state from the parent, snapshots.py), the parent partition's process is replaced by a new one
(as after a security update), every parked child is restored into a new partition (with the old
one's name, output and identity in traces) whose devices the new parent runs, and all run on, on the same scheduler, to their end: each
with the output, exits and instruction count of an undisturbed run. A child that ended before
the servicing stays ended; a child that cannot be parked (it uses VMBus, whose channels
snapshots do not carry) makes the servicing refused before anything is stopped.

Figures (``Figures.describe``): per child the time it was paused (from the moment the children
stopped to its restore) with its save and restore times and snapshot bytes; the parent's
restart (the old process gone, the new one answering); the total, from the stop to the last
restore. The children share one CPU with both parent processes: the figures are wall time.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

from hypervisors.micro.snapshots import PartitionMachine, refuse_enlightened
from vmm.cpusched.dispatch import ThreadedClient, VcpuClient, dispatch
from vmm.cpusched.policy import Controls
from vmm.cpusched.scheduler import ProportionalShare
from vmm.snapshot import format as snapfile
from vmm.snapshot import machine
from vmm.snapshot.state import StateError

STEP_NS = 20_000      # virtual time between checks of the trigger (20k guest instructions)


@dataclass
class ChildFigures:
    name: str
    exits: int            # when it was parked
    bytes: int = 0
    save_s: float = 0.0
    restore_s: float = 0.0
    paused_s: float = 0.0


@dataclass
class Figures:
    old_pid: int = 0
    new_pid: int = 0
    children: list[ChildFigures] = field(default_factory=list)
    restart_s: float = 0.0
    total_s: float = 0.0

    def describe(self) -> str:
        lines = [(f"trapvisor: serviced the parent partition (pid {self.old_pid} -> "
                  f"{self.new_pid}): restart {self.restart_s * 1e3:.1f} ms, total "
                  f"{self.total_s * 1e3:.1f} ms")]
        lines += [f"trapvisor:   {c.name}: parked at exit {c.exits}, paused "
                  f"{c.paused_s * 1e3:.1f} ms (save {c.save_s * 1e3:.1f} ms, restore "
                  f"{c.restore_s * 1e3:.1f} ms), {c.bytes} bytes" for c in self.children]
        return "\n".join(lines)


class Children:
    """The children and their vCPU threads' clients on one scheduler."""

    def __init__(self, guests, scheduler: ProportionalShare | None):
        self.partitions = [partition for partition, _image in guests]
        self.scheduler = scheduler or ProportionalShare(
            {f"{p.partition_id}:{p.name}": Controls() for p in self.partitions})
        self.failures: dict[int, object] = {}
        self.clients: list[ThreadedClient] = []
        for index, (partition, image) in enumerate(guests):
            partition.vm.identity = (partition.partition_id, partition.name)
            try:
                partition.boot(image)
            except Exception as exc:  # noqa: BLE001 - this VM cannot start; the others run
                self._failed(index, exc)
        self.start_clients()

    def _failed(self, index: int, exc: BaseException) -> None:
        self.failures.setdefault(index, self.partitions[index].failed(exc))

    def start_clients(self) -> None:
        self.clients = [ThreadedClient(VcpuClient(name, partition.vcpu,
                                                  lambda exc, i=index: self._failed(i, exc)))
                        for index, (partition, name) in enumerate(zip(self.partitions,
                                                                      self.scheduler.accounts))]

    def stop_clients(self) -> None:
        for client in self.clients:
            client.close()
        self.clients = []

    def run_until_exit(self, number: int) -> bool:
        """Run on the scheduler until a child has taken ``number`` exits (True) or all ended."""
        while any(not p.vcpu.stopping for p in self.partitions):
            if any(p.vcpu.exit_count >= number for p in self.partitions):
                return True
            dispatch(self.clients, self.scheduler, until=self.scheduler.now + STEP_NS)
        return False

    def run_to_end(self) -> list:
        dispatch(self.clients, self.scheduler)
        self.stop_clients()
        return [self.failures.get(i) or p.vcpu.result() for i, p in enumerate(self.partitions)]


def service_parent(hypervisor, children: Children, say=print) -> Figures:
    """Park every running child, restart the parent partition, restore them into it."""
    running = [i for i, p in enumerate(children.partitions)
               if not p.vcpu.stopping and i not in children.failures]
    for index in running:
        try:
            refuse_enlightened(children.partitions[index])
        except StateError as exc:
            raise StateError(f"the parent partition is not serviced: {exc}") from None
    children.stop_clients()
    figures, started = Figures(old_pid=hypervisor.parent.pid), time.perf_counter()
    parked = {index: _park(children.partitions[index], figures) for index in running}
    restart = time.perf_counter()
    hypervisor.restart_parent()
    hypervisor.parent_modules()          # the new process answers: it is up
    figures.restart_s = time.perf_counter() - restart
    figures.new_pid = hypervisor.parent.pid
    for index, (data, sleep_until, child) in parked.items():
        children.partitions[index] = _unpark(hypervisor, children.partitions[index], data, child)
        children.partitions[index].vcpu.sleep_until = sleep_until
        child.paused_s = time.perf_counter() - started
    figures.total_s = time.perf_counter() - started
    children.start_clients()
    say(figures.describe(), file=sys.stderr)
    return figures


def _park(partition, figures: Figures) -> tuple[bytes, int | None, ChildFigures]:
    """The child as snapshot file bytes, with its scheduler sleep (not VM state: the
    dispatcher's), and its figures."""
    child = ChildFigures(partition.name, partition.vcpu.exit_count)
    started = time.perf_counter()
    data = machine.capture(PartitionMachine(None, partition)).to_bytes()
    child.save_s, child.bytes = time.perf_counter() - started, len(data)
    figures.children.append(child)
    return data, partition.vcpu.sleep_until, child


def _unpark(hypervisor, old, data: bytes, child: ChildFigures):
    """A new partition (the old one, its parent gone, stays until the hypervisor closes) with
    ``old``'s identity in traces and its output, the snapshot restored into it."""
    started = time.perf_counter()
    partition = hypervisor.create_partition(old.name, old.sink)
    partition.vm.identity = old.vm.identity
    machine.restore(PartitionMachine(hypervisor, partition), [snapfile.parse(data)])
    child.restore_s = time.perf_counter() - started
    return partition


def run_serviced(hypervisor, guests, at_exit: int, scheduler=None, say=print):
    """Run ``guests`` ((partition, image) pairs, partitions of ``hypervisor``), servicing the
    parent once a child has taken ``at_exit`` exits: (results in order, Figures or None if
    every child ended first, the partitions that ran each child last)."""
    children = Children(guests, scheduler)
    figures = None
    try:
        if children.run_until_exit(at_exit):
            figures = service_parent(hypervisor, children, say)
        return children.run_to_end(), figures, children.partitions
    finally:
        children.stop_clients()
