"""The dispatcher: several VMs share one physical CPU, one Unicorn running at a time, on the
grants of a ``ProportionalShare`` scheduler (scheduler.py). Mechanism only; both hypervisors use
it: monolithic runs its vCPUs on the calling thread, micro keeps one thread per child partition
that runs only while the scheduler has granted it the CPU (``ThreadedClient``).

A client is anything with a ``name`` and ``run_quantum(ns) -> Slice``. ``VcpuClient`` makes a
``Vcpu`` one: it runs the grant counted (vmm/vcpu.py ``run_quantum``), and a HLT that waits for a
timer hands the CPU back with the time the vCPU sleeps. Each VM's virtual time advances by its
own instructions and its own sleeps, exactly as when it runs alone, so its output is the same.
"""
from __future__ import annotations

import math
import threading
from collections.abc import Callable
from typing import Protocol

from vmm.cpusched.scheduler import Grant, ProportionalShare, Slice


class Client(Protocol):
    name: str

    def run_quantum(self, quantum: int) -> Slice: ...


class VcpuClient:
    """A vCPU as a client. ``failed(exc)`` ends this VM alone when its VMM code raises."""

    def __init__(self, name: str, vcpu, failed: Callable[[BaseException], object]):
        if vcpu.wall_clock:
            raise ValueError("--wall-clock VMs cannot share the CPU: the scheduler divides "
                             "virtual time, 1 ns per guest instruction")
        self.name = name
        self.vcpu = vcpu
        self.failed = failed

    def run_quantum(self, quantum: int) -> Slice:
        before = self.vcpu.instructions
        try:
            sleep = self.vcpu.run_quantum(quantum)
        except Exception as exc:  # noqa: BLE001 - one VM's failure; the others go on
            self.failed(exc)
            return Slice(self.vcpu.instructions - before, None, True)
        return Slice(self.vcpu.instructions - before, sleep, self.vcpu.stopping)


class ThreadedClient:
    """A client whose grants run on its own thread (a micro child's vCPU thread); the
    dispatcher's thread waits while it runs, so exactly one of them runs guest code at a time."""

    def __init__(self, client: Client):
        self.name = client.name
        self.client = client
        self._go = threading.Semaphore(0)
        self._done = threading.Semaphore(0)
        self._quantum: int | None = None
        self._slice = Slice(0)
        self.thread = threading.Thread(target=self._serve, name=client.name, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            self._go.acquire()
            if self._quantum is None:
                return
            self._slice = Slice(0, None, True)   # what the dispatcher sees if the grant raises
            try:
                self._slice = self.client.run_quantum(self._quantum)
            finally:
                self._done.release()

    def run_quantum(self, quantum: int) -> Slice:
        self._quantum = quantum
        self._go.release()
        self._done.acquire()
        return self._slice

    def close(self) -> None:
        self._quantum = None
        self._go.release()
        self.thread.join()


def dispatch(clients: list[Client], scheduler: ProportionalShare, until: int | None = None) -> None:
    """Run the clients on one CPU on the scheduler's grants until every VM has ended, or until
    the machine's virtual time reaches ``until`` ns (the VMs then stay where they are)."""
    by_name = {client.name: client for client in clients}
    horizon = math.inf if until is None else until
    while scheduler.now < horizon:
        decision = scheduler.pick()
        if decision is None:
            return
        if not isinstance(decision, Grant):
            scheduler.idle(int(min(decision.until, horizon)))
            continue
        quantum = int(min(decision.quantum, horizon - scheduler.now))
        scheduler.charge(decision.name, by_name[decision.name].run_quantum(quantum))
