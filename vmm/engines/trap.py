"""The trap-and-emulate engine: the guest kernel runs deprivileged and every privileged
instruction faults (#GP) into the VMM, which decodes it and emulates it on shadow state.

Unicorn's events become VM exits with Intel SDM reasons: a decoded privileged instruction gets the
reason a VT-x VMM would see (HLT, CR_ACCESS, MSR_READ, GDTR_IDTR_ACCESS, ...); CLI/STI/IRET/far
transfers/segment loads and every guest exception or INT n are EXCEPTION_NMI exits whose
interruption information says which event it was. IN/OUT and CPUID always exit.
"""
from __future__ import annotations

from emu.cpu import CS
from emu.events import ERROR_CODE_VECTORS, GP, PF, UD, EventKind
from emu.paging import CR0_PE, Fault
from vmm.engines.audit import audit_scanner, fidelity_report
from vmm.engines.base import VMCALL_BYTES, EngineBase
from vmm.engines.deprivilege import DeprivilegedGuest, UnsupportedGuestState
from vmm.engines.emulate import effective_address, emulate_hlt, emulator_for
from vmm.engines.plans import Plan, make_plan
from vmm.engines.scanner import CodeScanner
from vmm.exits import Outcome
from vmm.mmu.shadow import ShadowMmu
from vmm.run_state import RunState
from vmm.vmcs import ExitReason, Vmcs, VmExit, interruption_info

R = ExitReason


class TrapEngine(EngineBase):
    """Deprivileged guest kernel; privileged instructions and all I/O exit to the VMM."""
    name = "trap"
    guest_class = DeprivilegedGuest

    def make_mmu(self) -> ShadowMmu:
        """Shadow page tables: the guest runs deprivileged on the VMM's translations."""
        return ShadowMmu(self.vm)

    def attach(self, vcpu) -> None:
        super().attach(vcpu)
        self.vmcs = Vmcs()
        self.deprivileged = self.guest_class(vcpu, self.vmcs.guest)
        self.take_exit = vcpu.exits.take
        self._cpuid_done = False
        self._plans: dict[int, Plan] = {}
        self.scanner = self.make_scanner()
        self.scanner.start()

    def make_scanner(self) -> CodeScanner:
        return audit_scanner(self)

    def fidelity_report(self) -> str:
        return fidelity_report(self.scanner)

    def reset(self) -> None:
        self.deprivileged.take_over()

    # ----- Unicorn events -> exits --------------------------------------------------------------
    def _exit(self, reason: ExitReason, qualification: int = 0, length: int = 0) -> VmExit:
        """A new exit record; the VMCS exit-information fields follow it."""
        vmcs = self.vmcs
        vmcs.exit_reason, vmcs.exit_qualification = reason, qualification
        vmcs.exit_instruction_length = length
        return VmExit(reason, self.cpu.eip, qualification)

    def on_in(self, port: int, size: int) -> int:
        exit = self.io_exit(port, size, True, None)
        self.take_exit(exit)
        return exit.value

    def on_out(self, port: int, size: int, value: int) -> None:
        self.take_exit(self.io_exit(port, size, False, value))

    def on_cpuid(self) -> bool:
        self._cpuid_done = False
        self.take_exit(self._exit(R.CPUID, length=2))
        return self._cpuid_done

    def on_interrupt(self, intno: int) -> None:
        error_code, software = self.cpu.take_exception()
        if software:
            kind, raw = self.software_event(intno)
            self._event_exit(intno, kind, None, raw)
            return
        if intno == GP and (self.cpu.cpl != 3 or not self.vmcs.guest.cr0 & CR0_PE):
            plan = self._plan()
            if plan is not None:
                self.take_exit(self.instruction_exit(plan, error_code))
                return
        self._event_exit(intno, EventKind.HARDWARE_EXCEPTION,
                         error_code if intno in ERROR_CODE_VECTORS else None)

    def on_invalid_opcode(self) -> bool:
        """#UD. VMCALL (0F 01 C1) raises #UD on a CPU without VMX; here it is the hypercall
        instruction and exits with reason VMCALL, as it does in VMX non-root operation."""
        if self.at_vmcall():
            exit = self._exit(R.VMCALL, length=3)
            exit.insn_bytes = VMCALL_BYTES
            self.take_exit(exit)
            return True
        if self.int6_past():
            self.on_interrupt(UD)
        else:
            self._event_exit(UD, EventKind.HARDWARE_EXCEPTION, None)
        return True

    def _event_exit(self, vector: int, kind: EventKind, error_code: int | None,
                    raw: bytes = b"") -> None:
        """An exception or software interrupt to reflect. A software event's exit names the INT
        instruction itself (RIP and bytes), as VT-x reports it, though EIP is already past it."""
        qualification = self.cpu.cr[2] & 0xFFFFFFFF if vector == PF else 0
        exit = self._exit(R.EXCEPTION_NMI, qualification, len(raw))
        exit.rip = (exit.rip - len(raw)) & 0xFFFFFFFF
        exit.insn_bytes = raw
        exit.intr_info = interruption_info(vector, kind.value, error_code is not None)
        exit.error_code = error_code
        self.take_exit(exit)

    def _plan(self) -> Plan | None:
        """The faulting instruction's plan, cached per linear address and revalidated against
        the bytes in memory (self-modifying code, another address space, another mode)."""
        cpu = self.cpu
        cs = cpu.segs[CS]
        linear = (cs.base + cpu.eip_reg.value) & 0xFFFFFFFF
        plan = self._plans.get(linear)
        if plan is not None and plan.cs_flags == cs.flags:
            if self.fetch(linear, plan.size) == plan.insn.raw:
                return plan
        bits = cpu.code_bits
        insn = self.disasm.decode(self.fetch(linear), cpu.eip, bits)
        emulator = emulator_for(insn) if insn is not None else None
        if emulator is None:
            return None
        plan = self._plans[linear] = make_plan(insn, emulator, bits, cs.flags)
        return plan

    def instruction_exit(self, plan: Plan, error_code: int | None = None) -> VmExit:
        """The exit record of a privileged instruction, carrying its decoded plan."""
        insn = plan.insn
        qualification = plan.qualification
        if plan.reason is R.INVLPG:
            qualification = effective_address(self.deprivileged, insn, insn.operands[0])
        exit = self._exit(plan.reason, qualification, insn.size)
        exit.insn, exit.plan = insn, plan
        if plan.reason is R.EXCEPTION_NMI:
            exit.intr_info = interruption_info(GP, EventKind.HARDWARE_EXCEPTION.value, True)
            exit.error_code = error_code
        return exit

    # ----- ExitOps: what the exit handlers call ------------------------------------------------
    def reflect_exception(self, exit: VmExit) -> Outcome:
        info = exit.intr_info
        self.deprivileged.reflect(info & 0xFF, EventKind((info >> 8) & 7), exit.error_code)
        return Outcome.RESUME

    def emulate(self, exit: VmExit) -> Outcome:
        """Carry out the plan the exit record carries."""
        return self.run_emulator(exit.plan)

    def run_emulator(self, plan: Plan) -> Outcome:
        eip = self.cpu.eip_reg
        start = eip.value
        try:
            if not plan.emulator(self.deprivileged, plan.insn):
                eip.value = (start + plan.size) & plan.eip_mask
        except (Fault, UnsupportedGuestState) as exc:
            return self._emulation_failed(exc)
        return Outcome.RESUME

    def _emulation_failed(self, exc: Exception) -> Outcome:
        """A fault while emulating is the guest's (reflect it); an unmodelled state ends the run."""
        if isinstance(exc, Fault):
            if exc.vector == PF:
                self.cpu.write_cr(2, exc.cr2)
            self.deprivileged.reflect(exc.vector, EventKind.HARDWARE_EXCEPTION, exc.error_code)
            return Outcome.RESUME
        self.vcpu.finish(RunState.GUEST_FAULT, str(exc))
        return Outcome.STOP

    def skip_halt(self, exit: VmExit) -> None:
        emulate_hlt(self.deprivileged, exit.insn)

    def answer_cpuid(self, exit: VmExit, leaf_base: int, signature: bytes) -> Outcome:
        """CPUID passes through, except the hypervisor leaves, which name this VMM."""
        self._cpuid_done = self.hypervisor_cpuid(leaf_base, signature)
        return Outcome.RESUME

    def guest_view(self):
        return self.deprivileged.view

    def guest_state(self):
        """The guest-state area: the shadow registers the deprivileged guest believes it has."""
        return self.vmcs.guest

    def guest_selector(self, seg: int) -> int:
        return self.deprivileged.view.selector(seg)

    # ----- run loop -----------------------------------------------------------------------------
    def interrupt_window(self) -> bool:
        if self.deprivileged.protected and self.cpu.cpl == 3:
            return True  # guest user mode: the kernel can only have returned there with IF set
        return self.deprivileged.state.interrupt_flag

    def inject_external(self, vector: int) -> None:
        self.deprivileged.reflect(vector, EventKind.EXTERNAL)

    def after_run(self) -> None:
        """HLT, the only other way out of a run, faults into the VMM under trap."""

