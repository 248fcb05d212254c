"""The VT-x-style engine: the guest runs at real CPL 0 with its own CR0/CR3/CR4/GDT/IDT loaded in
the CPU (the VMCS guest-state area is the real CPU), and the VM-execution controls of
vmm/engines/vmx_controls.py decide what exits (Intel SDM Vol. 3, ch. 25-28).

How each exit is caught: port I/O, CPUID through the CPU's hooks; VMCALL through #UD; HLT because
the CPU returns from a run when it halts; exceptions through the interrupt hook and the exception
bitmap; MMIO windows through the CPU's MMIO callbacks and guest-physical addresses with nothing
behind them through the unmapped-memory hook (both EPT_VIOLATION). Instructions a CPL-0 guest
runs without any hook (MOV CR, RDMSR/WRMSR, INVLPG, LGDT...) are found by the translation-time
scanner (vmm/engines/scanner.py) and armed as stops only while a control makes them exit. An exit whose handler lets the instruction happen completes it on the
real CPU (one instruction, with that stop lifted): the guest-state area is the CPU itself.
"""
from __future__ import annotations

from emu.cpu import ECX, FLAG_IF
from emu.events import BP, ERROR_CODE_VECTORS, OF, UD, EventDelivery, EventKind, GuestView
from emu.memory import Access
from emu.paging import PF_P, PF_U, PF_W
from emu.tlb import FILL_WRITE
from vmm.engines.apic_access import ApicAccess
from vmm.engines.base import VMCALL_BYTES, EngineBase
from vmm.engines.emulate import effective_address
from vmm.engines.plans import GPR_NUMBER
from vmm.engines.scanner import IF_SETTERS, CodeScanner, SiteKind
from vmm.engines.vmx_controls import VmxControls
from vmm.exits import Outcome
from vmm.mmu.mmu import Mmu
from vmm.mmu.shadow import ShadowMmu
from vmm.vmcs import (
    CR_CLTS,
    CR_LMSW,
    CR_MOV_FROM,
    CR_MOV_TO,
    ActivityState,
    ExitReason,
    GuestState,
    SegmentRegister,
    TableRegister,
    Vmcs,
    VmExit,
    cr_qualification,
    ept_qualification,
    interruption_info,
)

R = ExitReason
DT_MNEMONICS = {"lgdt": R.GDTR_IDTR_ACCESS, "lidt": R.GDTR_IDTR_ACCESS,
                "sgdt": R.GDTR_IDTR_ACCESS, "sidt": R.GDTR_IDTR_ACCESS,
                "lldt": R.LDTR_TR_ACCESS, "ltr": R.LDTR_TR_ACCESS,
                "sldt": R.LDTR_TR_ACCESS, "str": R.LDTR_TR_ACCESS}


class VtxEngine(EngineBase):
    """Guest at real CPL 0; exits are decided by VMCS-like controls."""
    name = "vtx"

    def __init__(self, controls: VmxControls | None = None):
        super().__init__()
        self.controls = controls or VmxControls()

    def make_apic_access(self, lapic, take_exit) -> ApicAccess:
        """The APIC page under the controls' virtualize APIC accesses / APIC-register
        virtualization (SDM ch. 29; engines/apic_access.py)."""
        c = self.controls
        return ApicAccess(lapic, take_exit, self.block_rip, hardware=True,
                          access_exits=c.virtualize_apic_accesses,
                          register_virtualization=(c.virtualize_apic_accesses
                                                   and c.apic_register_virtualization))

    def attach(self, vcpu) -> None:
        super().attach(vcpu)
        self.vmcs = Vmcs()
        self.events = EventDelivery(self.cpu, self.lin, GuestView(self.cpu))
        self.scanner = self.window_scanner = CodeScanner(
            self.cpu, self.fetch, self.disasm, self.classify, lambda: True, owner="vtx")
        self.scanner.start()
        self._cpuid_done = False
        self._window_held = False
        self.ept_violation: tuple[Access, int] | None = None
        self.take_exit = vcpu.exits.take

    # ----- which instructions must stop (the controls in force) ---------------------------------
    def classify(self, insn) -> SiteKind | None:
        if self._may_exit(insn):
            return SiteKind.CALLOUT
        return SiteKind.WINDOW if insn.mnemonic in IF_SETTERS else None

    def _may_exit(self, insn) -> bool:
        c, mnemonic = self.controls, insn.mnemonic
        if mnemonic == "mov":
            regs = [op.reg or "" for op in insn.operands]
            if regs[0].startswith("cr"):
                return regs[0] == "cr3" and c.cr3_load_exiting or regs[0] in ("cr0", "cr4") and bool(
                    c.mask_and_shadow(int(regs[0][2]))[0])
            if regs[1].startswith("cr"):
                return regs[1] == "cr3" and c.cr3_store_exiting
            return c.mov_dr_exiting and any(r.startswith("dr") for r in regs)
        if mnemonic in ("clts", "lmsw"):
            return bool(c.cr0_guest_host_mask & 0xF)
        if mnemonic in ("rdmsr", "wrmsr"):
            return True  # MSRs outside the bitmaps' ranges (synthetic MSRs among them) always exit
        if mnemonic in DT_MNEMONICS:
            return c.descriptor_table_exiting
        return (mnemonic == "invlpg" and c.invlpg_exiting) or (
            mnemonic == "wbinvd" and c.wbinvd_exiting)

    def guest_state(self) -> GuestState:
        """The guest-state area: under VT-x the guest runs with its own CR0/CR3/CR4/GDT/IDT in
        the CPU, so the area is the CPU itself (read, not a copy kept beside it)."""
        cpu = self.cpu
        flags = cpu.system_flags

        def segment(cache) -> SegmentRegister:
            return SegmentRegister(cache.selector, cache.base, cache.limit, (cache.flags >> 8) & 0xF)
        return GuestState(
            cr0=int(cpu.cr[0]) & 0xFFFFFFFF, cr2=int(cpu.cr[2]) & 0xFFFFFFFF,
            cr3=int(cpu.cr[3]) & 0xFFFFFFFF, cr4=int(cpu.cr[4]) & 0xFFFFFFFF,
            gdtr=TableRegister(cpu.gdtr.base, cpu.gdtr.limit),
            idtr=TableRegister(cpu.idtr.base, cpu.idtr.limit),
            ldtr=segment(cpu.ldtr), tr=segment(cpu.tr),
            interrupt_flag=bool(flags & FLAG_IF), iopl=(flags >> 12) & 3,
            activity=ActivityState.HLT if self.vcpu.halted else ActivityState.ACTIVE)

    def controls_changed(self) -> None:
        """After changing ``controls`` from the API: rescan so the right instructions stop."""
        self.scanner.sites.clear()
        self.cpu.flush_translations()

    # ----- Unicorn events -> exits --------------------------------------------------------------
    def _exit(self, reason: ExitReason, qualification: int = 0, rip: int | None = None) -> VmExit:
        vmcs = self.vmcs
        vmcs.exit_reason, vmcs.exit_qualification = reason, qualification
        return VmExit(reason, self.cpu.eip if rip is None else rip, qualification)

    def on_in(self, port: int, size: int) -> int:
        if not self.controls.io_exits(port, size):
            return self.vm.pio.read(port, size)  # not intercepted: the port itself answers
        exit = self.io_exit(port, size, True, None)
        self.take_exit(exit)
        return exit.value

    def on_out(self, port: int, size: int, value: int) -> None:
        if not self.controls.io_exits(port, size):
            self.vm.pio.write(port, size, value)
            return
        self.take_exit(self.io_exit(port, size, False, value))

    def on_cpuid(self) -> bool:
        self._cpuid_done = False
        self.take_exit(self._exit(R.CPUID))
        return self._cpuid_done

    def on_invalid_opcode(self) -> bool:
        if self.at_vmcall():
            exit = self._exit(R.VMCALL)
            exit.insn_bytes = VMCALL_BYTES
            self.take_exit(exit)
            return True
        if self.int6_past():
            self.on_interrupt(UD)
            return True
        return self._exception(UD, EventKind.HARDWARE_EXCEPTION, None, b"")

    def on_interrupt(self, intno: int) -> None:
        error_code, software = self.cpu.take_exception()
        if software and intno != BP and intno != OF:
            self.events.deliver(intno, EventKind.SOFTWARE_INTERRUPT)  # INT n: only CD nn raises it
            return
        if software:
            kind, raw = self.software_event(intno)
            if kind is EventKind.SOFTWARE_EXCEPTION and self.controls.exception_exits(intno):
                self._exception(intno, kind, None, raw)
            else:
                self.events.deliver(intno, kind)  # INT n never exits under VT-x
            return
        code = error_code if intno in ERROR_CODE_VECTORS else None
        self._exception(intno, EventKind.HARDWARE_EXCEPTION, code, b"")

    def _exception(self, vector: int, kind: EventKind, error_code: int | None, raw: bytes) -> bool:
        """An exception in the bitmap exits (EXCEPTION_NMI); the others are delivered by the CPU
        through the guest's IDT, as hardware would, with no VMM involvement."""
        if not self.controls.exception_exits(vector):
            self.events.deliver(vector, kind, error_code)
            return True
        qualification = self.cpu.cr[2] & 0xFFFFFFFF if vector == 14 else 0
        exit = self._exit(R.EXCEPTION_NMI, qualification, (self.cpu.eip - len(raw)) & 0xFFFFFFFF)
        exit.insn_bytes = raw
        exit.intr_info = interruption_info(vector, kind.value, error_code is not None)
        exit.error_code = error_code
        self.take_exit(exit)
        return True

    def on_unmapped(self, access: Access, address: int, size: int, value: int) -> bool:
        """A guest-physical address with no RAM behind it: an EPT violation (handled after the
        run stops, with EIP at the instruction)."""
        self.ept_violation = (access, address)
        return super().on_unmapped(access, address, size, value)

    def machine_stopped(self, err: int) -> None:
        if self.ept_violation is None:
            super().machine_stopped(err)
            return
        access, address = self.ept_violation
        self.ept_violation = None
        exit = self._exit(R.EPT_VIOLATION, ept_qualification(access is Access.WRITE,
                                                              access is Access.FETCH))
        exit.guest_physical = address
        exit.detail = f"guest-physical {address:#x}"
        self.vmcs.guest_physical_address = address
        insn = self.current_insn()
        exit.insn, exit.insn_bytes = insn, insn.raw if insn else b""
        self.take_exit(exit)

    # ----- stops at scanned instructions --------------------------------------------------------
    def after_run(self) -> None:
        self.scanner.arm()
        site = self.scanner.callout_at(self.cpu.linear_pc())
        if site is not None and self.scanner.revalidate(site):
            site.hits += 1
            self._instruction(site.insn)
        elif self.cpu.halted:
            self._halted()

    def _instruction(self, insn) -> None:
        reason, qualification = self._exit_for(insn)
        if reason is None:
            self.complete_instruction(insn)  # armed, but these operands do not exit
            return
        exit = self._exit(reason, qualification)
        exit.insn = insn
        self.vmcs.exit_instruction_length = insn.size
        self.take_exit(exit)

    def _exit_for(self, insn) -> tuple[ExitReason | None, int]:
        c, mnemonic, gpr = self.controls, insn.mnemonic, self.cpu.gpr
        if mnemonic == "mov":
            return self._mov_cr_exit(insn)
        if mnemonic == "clts":
            return (R.CR_ACCESS, cr_qualification(0, CR_CLTS)) if c.clts_exits() else (None, 0)
        if mnemonic == "lmsw":
            source = self._lmsw_source(insn)
            exits = c.lmsw_exits(source)
            return (R.CR_ACCESS, cr_qualification(0, CR_LMSW, lmsw_source=source)) if exits else (
                None, 0)
        if mnemonic in ("rdmsr", "wrmsr"):
            write = mnemonic == "wrmsr"
            exits = c.msr_exits(gpr[ECX] & 0xFFFFFFFF, write)
            return ((R.MSR_WRITE if write else R.MSR_READ), 0) if exits else (None, 0)
        if mnemonic in DT_MNEMONICS:
            return DT_MNEMONICS[mnemonic], 0
        return {"invlpg": R.INVLPG, "wbinvd": R.WBINVD}[mnemonic], 0

    def _mov_cr_exit(self, insn) -> tuple[ExitReason | None, int]:
        dst, src = insn.operands
        if dst.reg and dst.reg.startswith("dr") or src.reg and src.reg.startswith("dr"):
            control, gpr, access = (dst, src, 0) if dst.reg.startswith("dr") else (src, dst, 1)
            return R.DR_ACCESS, int(control.reg[2:]) | access << 4 | GPR_NUMBER.get(gpr.reg, 0) << 8
        if src.reg.startswith("cr"):
            return R.CR_ACCESS, cr_qualification(3, CR_MOV_FROM, GPR_NUMBER.get(dst.reg, 0))
        cr = int(dst.reg[2:])
        value = self.cpu.gpr[GPR_NUMBER[src.reg]] & 0xFFFFFFFF
        if not self.controls.cr_write_exits(cr, value):
            return None, 0
        return R.CR_ACCESS, cr_qualification(cr, CR_MOV_TO, GPR_NUMBER.get(src.reg, 0))

    def _lmsw_source(self, insn) -> int:
        op = insn.operands[0]
        if op.kind == "reg":
            return self.cpu.gpr[GPR_NUMBER.get("e" + op.reg[-2:], 0)] & 0xFFFF
        return int.from_bytes(self.lin.read(effective_address(self, insn, op), 2), "little")

    def _halted(self) -> None:
        """HLT ran at CPL 0: the CPU halted and the run returned, EIP after the HLT."""
        if not self.controls.hlt_exiting:
            self.vcpu.halted = True
            return
        exit = self._exit(R.HLT, 0, (self.cpu.eip - 1) & 0xFFFFFFFF)
        exit.insn_bytes = b"\xf4"
        self.take_exit(exit)

    # ----- ExitOps: what the exit handlers call ------------------------------------------------
    def complete_instruction(self, insn) -> None:
        """Let ``insn`` (at EIP) happen on the real CPU: lift its stop, run it, re-arm.
        RDMSR/WRMSR go through the platform's MSRs instead (a device's, else QEMU's own)."""
        if self.complete_msr_access(insn):
            return
        here = self.cpu.linear_pc()
        armed = set(self.scanner.armed)
        self.cpu.set_exits(armed - {here}, owner="vtx")
        self.cpu.run(1)
        self.vcpu.retire(1)
        self.cpu.set_exits(armed, owner="vtx")
        if self.cpu.hook_error is not None:
            raise self.cpu.hook_error

    def emulate(self, exit: VmExit) -> Outcome:
        """CR/DR/MSR/INVLPG/descriptor-table exits: the VMM lets the access happen, then keeps
        the CR0/CR4 read shadows equal to what the guest holds in the bits the host owns."""
        self.complete_instruction(exit.insn)
        if exit.reason is R.CR_ACCESS:
            c = self.controls
            c.cr0_read_shadow = int(self.cpu.cr[0]) & c.cr0_guest_host_mask
            c.cr4_read_shadow = int(self.cpu.cr[4]) & c.cr4_guest_host_mask
        return Outcome.RESUME

    def make_mmu(self) -> Mmu:
        """With EPT the guest's own walk (guest-physical = host RAM, MMIO windows, EPT
        violations beyond); without it (--ept off) shadow page tables whose hidden page faults
        are #PF exits."""
        if self.controls.enable_ept:
            return super().make_mmu()
        mmu = ShadowMmu(self.vm)
        mmu.on_hidden_fault = self._hidden_page_fault
        mmu.on_traced_write = lambda page: self._hidden_page_fault(page, FILL_WRITE, PF_P)
        return mmu

    def _hidden_page_fault(self, page: int, access: int, present: int = 0) -> None:
        """A fill the shadow tables lack, while the guest's own tables map the page: on a CPU
        without EPT the shadow entry is not present, so the access takes #PF, which exits (the
        bitmap has #PF); the VMM fills the shadow entry and resumes without injecting. The
        qualification is the linear page (the fill is told no offset). A store to a
        write-protected (traced) guest page table is such an exit too, with P set."""
        error = present | (PF_W if access == FILL_WRITE else 0) | (PF_U if self.cpu.cpl == 3 else 0)
        exit = self._exit(R.EXCEPTION_NMI, page)
        exit.intr_info = interruption_info(14, EventKind.HARDWARE_EXCEPTION.value, True)
        exit.error_code, exit.hidden_fault = error, True
        self.take_exit(exit)

    def reflect_exception(self, exit: VmExit) -> Outcome:
        """Reflect the exception back into the guest by VM-entry event injection; a hidden page
        fault (shadow paging) is the VMM's own, fixed by filling the shadow entry."""
        if exit.hidden_fault:
            return Outcome.RESUME
        info = exit.intr_info
        self.inject(info & 0xFF, EventKind((info >> 8) & 7), exit.error_code)
        return Outcome.RESUME

    def inject(self, vector: int, kind: EventKind, error_code: int | None = None) -> None:
        """VM entry with the interruption-information field valid: the CPU delivers the event
        through the guest's IDT as it enters (SDM 26.6)."""
        c = self.controls
        c.entry_interruption_info = interruption_info(vector, kind.value, error_code is not None)
        c.entry_exception_error_code = error_code or 0
        self.events.deliver(vector, kind, error_code)
        c.entry_interruption_info = 0

    def skip_halt(self, exit: VmExit) -> None:
        """HLT exits after the CPU already stepped over the HLT."""

    def answer_cpuid(self, exit: VmExit, leaf_base: int, signature: bytes) -> Outcome:
        """CPUID passes through, except the hypervisor leaves, which name this VMM."""
        self._cpuid_done = self.hypervisor_cpuid(leaf_base, signature)
        return Outcome.RESUME

    # ----- run loop -----------------------------------------------------------------------------
    def interrupt_window(self) -> bool:
        open_ = bool(self.cpu.system_flags & FLAG_IF)
        if not open_ and self.vm.irq_chip.has_interrupt():
            self._window_held = True
        return open_

    def inject_external(self, vector: int) -> None:
        if self._window_held:
            self.take_exit(self._exit(R.INTERRUPT_WINDOW))
        self._window_held = False
        self.inject(vector, EventKind.EXTERNAL)
