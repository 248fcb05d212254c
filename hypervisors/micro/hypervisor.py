"""The micro hypervisor (Hyper-V's "microkernelized" design): this process partitions CPU and
memory, keeps one thread per child vCPU (as KVM's vCPU threads) that runs only while the
proportional-share scheduler (vmm/cpusched) grants it the CPU, dispatches exits, handles
hypercalls and delivers messages and events. Every device model runs in the parent (root)
partition, a separate process it starts and supervises.

Child RAM is a memfd handed to the parent with SCM_RIGHTS; the parent maps only GPADL-granted
ranges of it. If the parent dies, the VMs that were running stop with RunState.DEVICE_ERROR and
``parent_report()`` says which; ``restart_parent()`` starts a new one for new VMs.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from typing import Callable

from hypervisors.images import GuestImage
from hypervisors.micro.partition import ChildPartition
from hypervisors.micro.slot import Side, SlotEnd, create_slot, placement
from hypervisors.micro.wire import HEADER, Control, PartitionConfig, Record, pack
from vmm.cpusched.dispatch import ThreadedClient, VcpuClient, dispatch
from vmm.cpusched.policy import Controls
from vmm.cpusched.scheduler import ProportionalShare
from vmm.engines import make_engine
from vmm.run_state import RunResult
from vmm.vm import DEFAULT_RAM, Vm

CONTROL_RECORD_MAX = 1 << 20
PREFIX_LOCK = threading.Lock()


class ParentProcess:
    """The root partition's process and the control socket to it."""

    def __init__(self):
        self.control, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "hypervisors.micro.parent", str(theirs.fileno())],
            pass_fds=(theirs.fileno(),))
        theirs.close()
        self.lock = threading.Lock()

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def settle(self, timeout: float = 5) -> None:
        """A child saw its channel close: a dying process closes its sockets before its exit
        can be collected, so give the exit a moment to become visible."""
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass

    def request(self, op: Control, value: int = 0, payload: bytes = b"",
                fds: tuple[int, ...] = ()) -> bytes:
        """One control request; the reply's payload, or ValueError with the parent's refusal."""
        with self.lock:
            try:
                socket.send_fds(self.control, [pack(op, value=value, payload=payload)], list(fds))
                reply = self.control.recv(CONTROL_RECORD_MAX)
            except OSError as exc:
                raise ConnectionError(f"the parent partition is gone ({exc})") from None
        if not reply:
            raise ConnectionError(f"the parent partition is gone ({self.describe_exit()})")
        if reply[0] == Record.FAULT:
            raise ValueError(f"the parent partition refused the VM: "
                             f"{reply[HEADER.size:].decode(errors='replace')}")
        return reply[HEADER.size:]

    def create_partition(self, partition_id: int, config: PartitionConfig,
                         ram_fd: int) -> tuple[SlotEnd, bytes]:
        """The new child's end of its channel and its device layout in the parent. The parent
        gets the other end of a stream socket (kept open only to tell each side the other
        lives), the RAM, the shared slot and its two doorbells (to the parent, to us)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        slot = create_slot(*placement(partition_id))
        to_parent, to_us = (os.eventfd(0, os.EFD_CLOEXEC) for _ in range(2))
        try:
            layout = self.request(Control.CREATE_PARTITION, partition_id, config.encode(),
                                  (theirs.fileno(), ram_fd, slot, to_parent, to_us))
        except (ValueError, ConnectionError):
            ours.close()
            for fd in (slot, to_parent, to_us):
                os.close(fd)
            raise
        finally:
            theirs.close()
        return SlotEnd(Side.HYPERVISOR, slot, to_parent, to_us, ours), layout

    def describe_exit(self) -> str:
        code = self.process.poll()
        if code is None:
            return "still running"
        if code < 0:
            return f"killed by {signal.Signals(-code).name}"
        return f"exited with status {code}"

    def close(self) -> None:
        self.control.close()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def prefixed_sink(prefix: str, sink: Callable[[bytes], None]) -> Callable[[bytes], None]:
    """A sink that writes whole lines, each starting with ``prefix``: how the output of several
    VMs running side by side stays apart. A last line without a newline is never written."""
    pending = bytearray()

    def write(data: bytes) -> None:
        pending.extend(data)
        end = pending.rfind(b"\n") + 1
        if end:
            lines = bytes(pending[:end]).splitlines(keepends=True)
            del pending[:end]
            with PREFIX_LOCK:
                sink(b"".join(prefix.encode() + line for line in lines))
    return write


class MicroHypervisor:
    """Runs child partitions whose devices live in a parent-partition process."""
    name = "micro"

    def __init__(self, engine: str = "trap", ram_size: int = DEFAULT_RAM,
                 sink: Callable[[bytes], None] = lambda data: None, input_data: bytes = b"",
                 input_stream=None, observers=(), timeout: float | None = None,
                 max_exits: int | None = None, wall_clock: bool = False,
                 exit_on: str = "", disk: str | None = None, inject_fault: str | None = None,
                 drives=(), ept: bool = True, apicv: bool = True):
        make_engine(engine, exit_on, ept, apicv)  # refuses a bad engine or control before anything starts
        if input_stream is not None:
            raise ValueError("--stdin is not supported by the micro hypervisor yet "
                             "(use --input TEXT)")
        self.engine = engine
        self.exit_on = exit_on
        self.ept = ept
        self.apicv = apicv
        self.ram_size = ram_size
        self.sink = sink
        self.config = PartitionConfig(ram_size, input_data, disk or "", inject_fault or "",
                                      tuple(str(drive) for drive in drives))
        self.vcpu_options = dict(observers=observers, timeout=timeout, max_exits=max_exits,
                                 wall_clock=wall_clock)
        self.partitions: list[ChildPartition] = []
        self.parent_children: list[ChildPartition] = []   # those the current parent serves
        self.parent = ParentProcess()

    def create_partition(self, name: str = "", sink: Callable[[bytes], None] | None = None,
                         inject_fault: str | None = None) -> ChildPartition:
        """A new child partition with its devices created in the parent; ``inject_fault``
        overrides the hypervisor-wide --inject-device-fault for this child."""
        partition_id = len(self.partitions) + 1
        vm = Vm(self.ram_size, self.vcpu_options["wall_clock"])
        config = (self.config if inject_fault is None
                  else self.config._replace(fault_device=inject_fault))
        try:
            channel, layout = self.parent.create_partition(partition_id, config, vm.memory.fd)
        except (ValueError, ConnectionError):
            vm.close()
            raise
        partition = ChildPartition(partition_id, name or f"vm{partition_id}", vm,
                                   make_engine(self.engine, self.exit_on, self.ept, self.apicv), sink or self.sink, channel, layout,
                                   **self.vcpu_options)
        self.partitions.append(partition)
        self.parent_children.append(partition)
        return partition

    @property
    def vm(self) -> Vm:
        """The first child's VM (the single-guest interface MonolithicHypervisor also offers)."""
        return self.partitions[0].vm

    def run(self, image: GuestImage) -> RunResult:
        """Run one guest in a new child partition."""
        return self.create_partition().run(image)

    def run_all(self, guests: list[tuple[ChildPartition, GuestImage]],
                scheduler: ProportionalShare | None = None) -> list[RunResult]:
        """Run several children on the one CPU under the proportional-share scheduler (vmm/cpusched;
        equal shares unless ``scheduler`` is given, whose accounts name the children in order).
        Each child keeps its vCPU thread, which runs only while the scheduler grants it the CPU;
        a failure in a child's thread ends that VM alone. Results in the given order."""
        if scheduler is None and len(guests) == 1:
            return [guests[0][0].run(guests[0][1])]    # alone on the CPU: nothing to schedule
        if scheduler is None:
            scheduler = ProportionalShare({f"{p.partition_id}:{p.name}": Controls()
                                           for p, _ in guests})
        failures: dict[int, RunResult] = {}
        clients = []
        for index, ((partition, image), name) in enumerate(zip(guests, scheduler.accounts)):
            failed = lambda exc, i=index, p=partition: failures.setdefault(i, p.failed(exc))
            if len(guests) > 1:
                partition.vm.identity = (partition.partition_id, partition.name)
            try:
                partition.boot(image)
            except Exception as exc:  # noqa: BLE001 - this VM cannot start; the others run
                failed(exc)
            clients.append(ThreadedClient(VcpuClient(name, partition.vcpu, failed)))
        try:
            dispatch(clients, scheduler)
        finally:
            for client in clients:
                client.close()
        return [failures.get(i) or p.vcpu.result() for i, (p, _) in enumerate(guests)]

    def parent_report(self) -> str | None:
        """If the parent partition died: which VMs lost their devices, and what to do."""
        lost = [p for p in self.parent_children if p.channel.lost is not None]
        if lost:
            self.parent.settle()
        if self.parent.alive():
            return None
        names = ", ".join(f"{p.partition_id} ({p.name})" for p in lost) or "none"
        return (f"trapvisor: the parent partition (pid {self.parent.pid}) "
                f"{self.parent.describe_exit()}; VMs stopped with device-error: {names}. "
                f"Other VMs were not affected. MicroHypervisor.restart_parent() starts a new "
                f"parent partition for new VMs.")

    def restart_parent(self) -> None:
        """Start a fresh parent partition; VMs created from now on get their devices there."""
        self.parent.close()
        self.parent = ParentProcess()
        self.parent_children = []

    def parent_modules(self) -> list[str]:
        """The project's modules loaded in the parent process, 'name path' a line."""
        return self.parent.request(Control.MODULES).decode().splitlines()

    def close(self) -> None:
        for partition in self.partitions:
            partition.close()
        self.parent.close()
