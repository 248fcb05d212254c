"""The exit path: the one entry through which every engine reports a VM exit, and the exit table
that dispatches it (KVM's ``vmx_handle_exit`` and ``kvm_vmx_exit_handlers[]``).

An engine builds a ``VmExit`` record (reason, RIP, typed data, the decoded instruction and how to
carry it out) and calls ``ExitPath.take``; that counts the exit, lets observers see it, calls the
table's handler for its reason and applies the ``Outcome``. Nothing bypasses the table: a
hypervisor personality builds its own as ``{**EXIT_HANDLERS, ...}`` and every exit of every engine
reaches it. Handlers act on the guest through the engine's ``ExitOps`` (the engine owns the guest
state). Port I/O goes to the VM's port bus, whose windows are where the hypervisor's policy shows
(device models in-process, or proxies to the parent partition). A reason with no handler fails
loudly with ``UnhandledExit``.
"""
from __future__ import annotations

import collections
import enum
import time
from typing import Callable, Protocol

from vmm.run_state import LAST_EXITS, RunState
from vmm.vmcs import ExitReason, VmExit

APIC_LINEAR_WRITE = 1   # an APIC-access exit's access type for a data write (SDM Table 28-6)

HYPERVISOR_LEAF = 0x40000000
HYPERVISOR_SIGNATURE = b"TrapVisorVMM"
HV_STATUS_INVALID_HYPERCALL_CODE = 0x0002


class Outcome(enum.Enum):
    """What the run loop does after a handler returns (Firecracker's VcpuEmulation)."""
    RESUME = "resume"
    HALT = "halt"
    STOP = "stop"


class UnhandledExit(RuntimeError):
    """An exit reason arrived that the hypervisor has no handler for."""


Handler = Callable[[object, VmExit], Outcome]  # (the vmm.vcpu.Vcpu, the exit) -> Outcome
# Enum members are slow to look up on Python 3.11 (~0.1-0.2 µs each); the exit path is hot.
RESUME, HALT, STOP = Outcome.RESUME, Outcome.HALT, Outcome.STOP
RUNNING = RunState.RUNNING


class ExitOps(Protocol):
    """What an exit handler asks the engine to do to the guest. The engine owns the guest state
    (the real CPU, or the shadow registers of a deprivileged guest), so handlers never touch it
    behind the engine's back."""

    def emulate(self, exit: VmExit) -> Outcome:
        """Carry out the privileged instruction the exit decoded (``exit.insn``/``exit.plan``)."""

    def reflect_exception(self, exit: VmExit) -> Outcome:
        """Deliver the exit's exception or software interrupt through the guest's IDT/IVT."""

    def answer_cpuid(self, exit: VmExit, leaf_base: int, signature: bytes) -> Outcome:
        """Complete CPUID: the machine's answer, but the hypervisor leaves name this VMM."""

    def skip_halt(self, exit: VmExit) -> None:
        """Step over the HLT the exit reports (the loop then idles the vCPU)."""

    def complete_vmcall(self, exit: VmExit) -> None:
        """A hypercall handler finished: step over VMCALL."""

    def emulate_mmio(self, exit: VmExit) -> Outcome:
        """An EPT violation: carry out the access against the MMIO bus (or end the run if
        nothing is there)."""

    def complete_exit_info(self, exit: VmExit) -> None:
        """Fill in what only observers read (I/O qualification, instruction bytes)."""


class Observer(Protocol):
    """Tracing, statistics and the debugger watch exits without being handlers."""

    def on_exit(self, vcpu, exit: VmExit) -> None: ...
    def on_entry(self, vcpu, exit: VmExit, outcome: Outcome) -> None: ...


class ExitPath:
    """A vCPU's exit entry: counting, the last exits for failure reports, observers, dispatch."""

    def __init__(self, vcpu, table: dict[ExitReason, Handler], observers=(),
                 max_exits: int | None = None):
        self.vcpu = vcpu
        self.table = table
        self.observers = list(observers)
        self.max_exits = max_exits
        self.count = 0
        self.recent: collections.deque[VmExit] = collections.deque(maxlen=LAST_EXITS)

    def take(self, exit: VmExit) -> Outcome:
        """Called by the engine, inside a Unicorn hook or after a run, for every VM exit. Once
        the run has ended, exits of the instructions Unicorn still finishes are not handled."""
        if self.vcpu.state is not RUNNING:
            return STOP
        self.count += 1
        self.recent.append(exit)
        if self.observers:
            return self._observed(exit)
        handler = self.table.get(exit.reason) or self.unhandled(exit)
        outcome = handler(self.vcpu, exit)
        if outcome is not RESUME or self.max_exits is not None:
            self._apply(outcome)
        return outcome

    @staticmethod
    def unhandled(exit: VmExit) -> Handler:
        raise UnhandledExit(f"no handler for exit reason {int(exit.reason)} {exit.reason.name}")

    def _apply(self, outcome: Outcome) -> None:
        vcpu = self.vcpu
        if outcome is HALT:
            vcpu.halt()
        elif outcome is STOP:
            vcpu.cpu.stop()
        if self.max_exits is not None and self.count >= self.max_exits and not vcpu.stopping:
            vcpu.finish(RunState.MAX_EXITS, f"--max-exits {self.max_exits} reached")

    def _observed(self, exit: VmExit) -> Outcome:
        vcpu = self.vcpu
        exit.exit_ns = time.perf_counter_ns()
        vcpu.engine.complete_exit_info(exit)
        for observer in self.observers:
            observer.on_exit(vcpu, exit)
        try:
            outcome = (self.table.get(exit.reason) or self.unhandled(exit))(vcpu, exit)
        except BaseException:
            self._entry(exit, STOP)  # observers see the exit that killed the run
            raise
        self._apply(outcome)
        self._entry(exit, outcome)
        return outcome

    def _entry(self, exit: VmExit, outcome: Outcome) -> None:
        exit.entry_ns = time.perf_counter_ns()
        for observer in self.observers:
            observer.on_entry(self.vcpu, exit, outcome)


# ----- the shared handlers ------------------------------------------------------------------------
def handle_cpuid(vcpu, exit: VmExit) -> Outcome:
    """CPUID passes the machine's answer through, plus the hypervisor leaves at 0x40000000."""
    return vcpu.engine.answer_cpuid(exit, HYPERVISOR_LEAF, HYPERVISOR_SIGNATURE)


def handle_hlt(vcpu, exit: VmExit) -> Outcome:
    vcpu.engine.skip_halt(exit)
    return Outcome.HALT


def handle_emulated(vcpu, exit: VmExit) -> Outcome:
    """Privileged instructions the engine decoded: it carries out their semantics."""
    return vcpu.engine.emulate(exit)


def handle_exception(vcpu, exit: VmExit) -> Outcome:
    """A guest exception, INT n, or a faulting privileged instruction the engine decoded: the
    instruction is emulated, an event is reflected through the guest's own IDT/IVT."""
    if exit.plan is not None:
        return vcpu.engine.emulate(exit)
    return vcpu.engine.reflect_exception(exit)


def handle_vmcall(vcpu, exit: VmExit) -> Outcome:
    """A hypercall to a hypervisor that offers none: fail it the way Hyper-V fails an unknown
    call code (HV_STATUS_INVALID_HYPERCALL_CODE in EAX, EDX = 0) and step over VMCALL."""
    vcpu.cpu.gpr[0], vcpu.cpu.gpr[2] = HV_STATUS_INVALID_HYPERCALL_CODE, 0
    vcpu.engine.complete_vmcall(exit)
    return Outcome.RESUME


def handle_ept_violation(vcpu, exit: VmExit) -> Outcome:
    """A guest-physical access with no RAM behind it: MMIO emulation or the guest's fault."""
    return vcpu.engine.emulate_mmio(exit)


def handle_apic_access(vcpu, exit: VmExit) -> Outcome:
    """APIC_ACCESS (44): a read or write of the APIC page that APIC virtualization does not
    satisfy; APIC_WRITE (56): a virtualized write whose effect the VMM makes happen (SDM 29.4.3,
    engines/apic_access.py). Either way the access reaches the local APIC model."""
    bus = vcpu.vm.mmio
    if exit.reason is ExitReason.APIC_WRITE or exit.qualification >> 12 & 0xF == APIC_LINEAR_WRITE:
        bus.write(exit.guest_physical, exit.size, exit.value)
    else:
        exit.value = bus.read(exit.guest_physical, exit.size)
    return Outcome.RESUME


def handle_interrupt_window(vcpu, exit: VmExit) -> Outcome:
    """The guest can take interrupts again: the run loop injects the pending one on entry."""
    return Outcome.RESUME


def handle_triple_fault(vcpu, exit: VmExit) -> Outcome:
    vcpu.finish_triple_fault(exit.detail)
    return Outcome.STOP


def handle_io(vcpu, exit: VmExit) -> Outcome:
    """Port I/O through the VM's port bus. What answers behind a port is the hypervisor's
    policy: a device model in-process (monolithic), a proxy to the parent partition (micro)."""
    if exit.is_in:
        exit.value = vcpu.vm.pio.read(exit.port, exit.size)
    else:
        vcpu.vm.pio.write(exit.port, exit.size, exit.value)
    return RESUME if vcpu.state is RUNNING else STOP


EXIT_HANDLERS: dict[ExitReason, Handler] = {
    ExitReason.EXCEPTION_NMI: handle_exception,
    ExitReason.TRIPLE_FAULT: handle_triple_fault,
    ExitReason.CPUID: handle_cpuid,
    ExitReason.VMCALL: handle_vmcall,
    ExitReason.HLT: handle_hlt,
    ExitReason.INVLPG: handle_emulated,
    ExitReason.CR_ACCESS: handle_emulated,
    ExitReason.DR_ACCESS: handle_emulated,
    ExitReason.INVD: handle_emulated,
    ExitReason.WBINVD: handle_emulated,
    ExitReason.MSR_READ: handle_emulated,
    ExitReason.MSR_WRITE: handle_emulated,
    ExitReason.GDTR_IDTR_ACCESS: handle_emulated,
    ExitReason.LDTR_TR_ACCESS: handle_emulated,
    ExitReason.BT_CALLOUT: handle_emulated,
    ExitReason.EPT_VIOLATION: handle_ept_violation,
    ExitReason.APIC_ACCESS: handle_apic_access,
    ExitReason.APIC_WRITE: handle_apic_access,
    ExitReason.INTERRUPT_WINDOW: handle_interrupt_window,
    ExitReason.IO_INSTRUCTION: handle_io,
}

