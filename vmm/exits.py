"""The exit-handler table: reason -> handler(vcpu, exit) -> Outcome (KVM's kvm_vmx_exit_handlers).

Handlers emulate against the guest-state area through ``vcpu.guest`` (the engine's view of the
deprivileged guest). I/O exits are not in this table: where devices live is the hypervisor's
policy, so each hypervisor adds its own IO_INSTRUCTION handler. A hypervisor
personality builds its own table as ``{**EXIT_HANDLERS, ...}``; nobody mutates this one. A reason
with no handler fails loudly with ``UnhandledExit``.
"""
from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Callable

from vmm.vmcs import ExitReason, VmExit

if TYPE_CHECKING:
    from vmm.vcpu import Vcpu

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


Handler = Callable[["Vcpu", VmExit], Outcome]


def handle_cpuid(vcpu, exit: VmExit) -> Outcome:
    """CPUID passes the machine's answer through, plus the hypervisor leaves at 0x40000000."""
    return vcpu.guest.cpuid(HYPERVISOR_LEAF, HYPERVISOR_SIGNATURE)


def handle_hlt(vcpu, exit: VmExit) -> Outcome:
    vcpu.guest.skip_instruction(exit)
    return Outcome.HALT


def handle_emulated(vcpu, exit: VmExit) -> Outcome:
    """Privileged instructions the engine decoded: the guest view carries out their semantics."""
    return vcpu.guest.emulate(exit)


def handle_exception(vcpu, exit: VmExit) -> Outcome:
    """A guest exception, INT n, or a faulting sensitive instruction: the engine reflects the
    event through the guest's own IDT/IVT, or emulates the instruction it decoded."""
    return vcpu.guest.handle_exception(exit)


def handle_vmcall(vcpu, exit: VmExit) -> Outcome:
    """A hypercall to a hypervisor that offers none: fail it the way Hyper-V fails an unknown
    call code (HV_STATUS_INVALID_HYPERCALL_CODE in EAX, EDX = 0) and step over VMCALL."""
    vcpu.cpu.gpr[0], vcpu.cpu.gpr[2] = HV_STATUS_INVALID_HYPERCALL_CODE, 0
    vcpu.guest.complete_vmcall()
    return Outcome.RESUME


def handle_ept_violation(vcpu, exit: VmExit) -> Outcome:
    """A guest-physical access with no RAM behind it: MMIO emulation or the guest's fault."""
    return vcpu.guest.handle_ept_violation(exit)


def handle_interrupt_window(vcpu, exit: VmExit) -> Outcome:
    """The guest can take interrupts again: the run loop injects the pending one on entry."""
    return Outcome.RESUME


def handle_triple_fault(vcpu, exit: VmExit) -> Outcome:
    vcpu.finish_triple_fault(exit.detail)
    return Outcome.STOP


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
    ExitReason.INTERRUPT_WINDOW: handle_interrupt_window,
}


def dispatch(table: dict[ExitReason, Handler], vcpu, exit: VmExit) -> Outcome:
    handler = table.get(exit.reason)
    if handler is None:
        raise UnhandledExit(f"no handler for exit reason {int(exit.reason)} {exit.reason.name}")
    return handler(vcpu, exit)
