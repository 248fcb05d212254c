"""What every CPU virtualization engine shares: attaching to the CPU, reading the guest's current
instruction, and turning machine-level failures (unmapped memory, undecodable bytes) into a
defined end of the run with a report.
"""
from __future__ import annotations

from emu.cpu import CS, EAX, EBX, ECX, EDX, describe_run_error
from emu.disasm import Disassembler, Insn
from emu.events import EventKind
from emu.memory import Access
from emu.paging import CR0_PG, BusError, Fault
from emu.tlb import FILL_FETCH, FILL_WRITE
from vmm.engines.apic_access import ApicAccess
from vmm.mmu.mmu import Mmu, Unbacked
from vmm.exits import Outcome
from vmm.run_state import RunState, outside_ram
from vmm.vmcs import EPT_WRITE, ExitReason, VmExit, ept_qualification, io_qualification

MAX_INSN = 15
HYPERVISOR_LEAVES = range(0x40000000, 0x40000100)
VMCALL_BYTES = b"\x0f\x01\xc1"
IMM_IO_OPCODES = frozenset((0xE4, 0xE5, 0xE6, 0xE7))
STRING_IO_OPCODES = frozenset((0x6C, 0x6D, 0x6E, 0x6F))
# enum lookups are slow on the exit path
IO_INSTRUCTION, EPT_VIOLATION = ExitReason.IO_INSTRUCTION, ExitReason.EPT_VIOLATION
UNBACKED_ACCESS = {FILL_WRITE: Access.WRITE, FILL_FETCH: Access.FETCH}
PREFIXES = frozenset((0x66, 0x67, 0xF3, 0xF2, 0x26, 0x2E, 0x36, 0x3E, 0x64, 0x65))


class EngineBase:
    """Shared engine plumbing; subclasses implement the CpuHandler hooks."""
    name = "?"

    window_scanner = None   # the CodeScanner whose window sites hold_interrupt arms
    apic_access: ApicAccess | None = None   # how accesses to the local APIC's page are handled

    def __init__(self, apicv: bool = True):
        self.disasm = Disassembler()
        self.unmapped: tuple[Access, int, int] | None = None
        self.apicv = apicv

    def attach(self, vcpu) -> None:
        self.vcpu = vcpu
        self.vm = vcpu.vm
        self.cpu = vcpu.vm.cpu
        self.lin = vcpu.vm.lin
        self.cpu.attach(self)
        self.mmu = self.make_mmu()
        self.mmu.attach()
        self.vm.restore_hooks.append(self.mmu.reset)   # a snapshot restored: nothing cached holds
        if self.vm.lapic is not None:
            self.apic_access = self.make_apic_access(self.vm.lapic, vcpu.exits.take)

    def make_apic_access(self, lapic, take_exit) -> ApicAccess:
        """A software VMM's APIC page (apic_access.py): with --apicv on, reads of the stable
        registers are answered inside the intercept; vtx overrides with its VT-x controls."""
        return ApicAccess(lapic, take_exit, self.block_rip, hardware=False, access_exits=False,
                          register_virtualization=self.apicv)

    def block_rip(self) -> int:
        """The RIP an exit from inside a memory callback reports: the translation block's start
        (Unicorn does not sync EIP before an MMIO callback)."""
        return self.cpu.eip_reg.value & 0xFFFFFFFF

    def apic_report(self) -> str:
        """--stats: how the APIC page was handled (empty when the guest has no local APIC)."""
        return self.apic_access.report() if self.apic_access is not None else ""

    def make_mmu(self) -> Mmu:
        """The engine's MMU: the guest walk (engines with shadow tables override)."""
        return Mmu(self.vm)

    def reset(self) -> None:
        """Called once the guest is loaded and the CPU holds its boot state."""

    def complete_exit_info(self, exit: VmExit) -> None:
        """Fill in what only observers read: the I/O qualification (its string/REP/immediate
        bits come from the instruction bytes), the exiting instruction's bytes and text."""
        if exit.qualification is None:
            exit.qualification = self.io_exit_qualification(exit.port, exit.size, exit.is_in)
        insn = exit.insn
        if insn is not None:
            exit.insn_bytes = exit.insn_bytes or insn.raw
            exit.detail = exit.detail or str(insn)
        elif not exit.insn_bytes:
            insn = self.current_insn()
            if insn is not None and self.cpu.eip == exit.rip:
                exit.insn_bytes = insn.raw

    def complete_msr_access(self, insn) -> bool:
        """The RDMSR/WRMSR ``insn`` (decoded at EIP) on a guest at real CPL 0 (native, vtx):
        carry it out through the platform (a device's MSR, else QEMU's) and step over it; False
        if it is neither. A value the platform refuses is the CPU's #GP, delivered through the
        guest's IDT."""
        if insn.mnemonic not in ("rdmsr", "wrmsr"):
            return False
        gpr, vm = self.cpu.gpr, self.vm
        msr = gpr[ECX] & 0xFFFFFFFF
        try:
            if insn.mnemonic == "rdmsr":
                value = vm.read_msr(msr)
                gpr[EAX], gpr[EDX] = value & 0xFFFFFFFF, value >> 32 & 0xFFFFFFFF
            else:
                vm.write_msr(msr, (gpr[EDX] & 0xFFFFFFFF) << 32 | gpr[EAX] & 0xFFFFFFFF)
        except Fault as fault:
            self.events.deliver(fault.vector, EventKind.HARDWARE_EXCEPTION, fault.error_code)
            return True
        self.cpu.eip = self.cpu.eip + insn.size
        self.vcpu.retire(1)
        return True

    # ----- MMIO: exits under a VMM (native overrides with the bare bus) -------------------------
    def on_mmio_read(self, address: int, size: int) -> int:
        apic = self.apic_access
        if apic is not None and address & ~0xFFF == apic.lapic.base:
            return apic.read(address, size, self.mmio_exit)
        exit = self.mmio_exit(address, size, None)
        self.take_exit(exit)
        return exit.value

    def on_mmio_write(self, address: int, size: int, value: int) -> None:
        apic = self.apic_access
        if apic is not None and address & ~0xFFF == apic.lapic.base:
            apic.write(address, size, value, self.mmio_exit)
            return
        self.take_exit(self.mmio_exit(address, size, value))

    def mmio_exit(self, address: int, size: int, value: int | None) -> VmExit:
        """An access to an MMIO window as the EPT_VIOLATION a VT-x VMM sees (a classic VMM
        takes it as a hidden #PF on a not-present shadow PTE; the exit names what VT-x would).
        Its RIP is the start of the translation block: Unicorn does not sync EIP before an MMIO
        callback. A read answers all-ones unless a handler does."""
        exit = VmExit(EPT_VIOLATION, self.block_rip(), ept_qualification(write=value is not None))
        exit.guest_physical, exit.size = address, size
        exit.value = (1 << 8 * size) - 1 if value is None else value
        return exit

    def emulate_mmio(self, exit: VmExit) -> Outcome:
        """The access reaches the device behind the MMIO window; with none there, the guest
        touched memory that does not exist, which ends the run with a report."""
        bus, address = self.vm.mmio, exit.guest_physical
        if exit.size is None or bus.lookup(address) is None:
            self.vcpu.finish(RunState.GUEST_FAULT, f"EPT violation at guest-physical {address:#x}: "
                                                   "no RAM and no device there")
            return Outcome.STOP
        if exit.qualification & EPT_WRITE:
            bus.write(address, exit.size, exit.value)
        else:
            exit.value = bus.read(address, exit.size)
        return Outcome.RESUME

    def io_exit(self, port: int, size: int, is_in: bool, value: int | None) -> VmExit:
        """An IO_INSTRUCTION record. An IN reads all-ones unless a handler answers (as an
        undriven bus does): after the run has ended, no handler does."""
        exit = VmExit(IO_INSTRUCTION, self.cpu.eip_reg.value & 0xFFFFFFFF, None)
        exit.port, exit.size, exit.is_in = port, size, is_in
        exit.value = (1 << 8 * size) - 1 if is_in else value
        return exit

    def at_vmcall(self) -> bool:
        """#UD at VMCALL (0F 01 C1): the hypercall instruction, which exits with reason VMCALL
        in VMX non-root operation (a CPU without VMX raises #UD)."""
        return self.fetch(self.cpu.linear_pc(), 3) == VMCALL_BYTES

    def complete_vmcall(self, exit: VmExit) -> None:
        """A hypercall handler finished: step over the 3-byte VMCALL."""
        eip = self.cpu.eip_reg
        eip.value = (eip.value + len(VMCALL_BYTES)) & 0xFFFFFFFF

    def io_exit_qualification(self, port: int, size: int, is_in: bool) -> int:
        """The SDM I/O exit qualification of the IN/OUT/INS/OUTS at EIP (prefixes decoded)."""
        code = self.fetch(self.cpu.linear_pc(), 4)
        rep = False
        for byte in code:
            if byte not in PREFIXES:
                return io_qualification(port, size, is_in, byte in STRING_IO_OPCODES, rep,
                                        byte in IMM_IO_OPCODES)
            rep = rep or byte == 0xF3
        return io_qualification(port, size, is_in)

    def hypervisor_cpuid(self, leaf_base: int, signature: bytes) -> bool:
        """Answer CPUID's hypervisor leaves (0x40000000..) with this VMM's signature; False for
        any other leaf, which passes through to the machine."""
        gpr = self.cpu.gpr
        if gpr[EAX] & 0xFFFFFFFF not in HYPERVISOR_LEAVES:
            return False
        words = [int.from_bytes(signature[i:i + 4], "little") for i in (0, 4, 8)]
        gpr[EAX], gpr[EBX], gpr[ECX], gpr[EDX] = leaf_base, *words
        return True

    def guest_view(self):
        """The guest's architectural state as the guest sees it (emu.events.GuestView)."""
        return self.events.view

    def hold_interrupt(self, held: bool) -> None:
        """An interrupt waits for the guest's IF (or no longer does). Engines whose guest sets the
        real IF itself stop in front of the instructions that can set it (their scanner's window
        sites); under trap every such instruction traps and the emulator opens the window."""
        if self.window_scanner is not None:
            self.window_scanner.hold_window(held)

    def window_site_at(self, linear: int) -> bool:
        """The CPU stopped in front of an IF-setting instruction because an interrupt is held."""
        return self.window_scanner is not None and self.window_scanner.window_site_at(linear)

    def fidelity_report(self) -> str:
        """What the engine knows it failed to virtualize in this run; empty if nothing."""
        return ""

    def mmu_report(self) -> str:
        """The MMU's counts: TLB fills, the guest's #PFs, hidden page faults (shadow paging)."""
        stats = self.mmu.stats
        line = (f"MMU: {stats.fills} TLB fills, {stats.page_faults} guest page faults, "
                f"{len(self.mmu.grants.mixed)} frames holding code and stored data")
        traced = getattr(self.mmu, "traced_writes", None)
        if traced is not None:
            line += (f"; shadow paging: {stats.hidden_faults} hidden page faults, {traced} "
                     "traced page-table writes")
        return line

    def translation_report(self) -> str:
        """What the engine translated (binary translation's site table); empty for others."""
        return ""

    # ----- reading the guest's code -------------------------------------------------------------
    def fetch(self, linear: int, length: int = MAX_INSN) -> bytes:
        """Up to ``length`` instruction bytes at a linear address (fewer at the end of mapped
        memory). While paging is off this is a plain slice of RAM: trap handlers call it on
        every exit."""
        memory = self.vm.memory
        if not self.cpu.cr[0] & CR0_PG and linear + length <= memory.size:
            return memory.mmap[linear:linear + length]
        for length in sorted({length, 8, 4, 2, 1} & set(range(1, length + 1)), reverse=True):
            try:
                return self.lin.read(linear, length)
            except (Fault, BusError):
                continue
        return b""

    def software_event(self, vector: int) -> tuple[EventKind, bytes]:
        """Which instruction raised software event ``vector``: Unicorn reports INT n, INT3 and
        INTO with EIP already past them, so look back (CD nn, CC, CE)."""
        before = self.fetch((self.cpu.linear_pc() - 2) & 0xFFFFFFFF)[:2]
        if before == bytes([0xCD, vector]):
            return EventKind.SOFTWARE_INTERRUPT, before
        if before[1:] in (b"\xcc", b"\xce"):
            return EventKind.SOFTWARE_EXCEPTION, before[1:]
        return EventKind.SOFTWARE_INTERRUPT, b""

    def int6_past(self) -> bool:
        """Unicorn hands every exception 6 to its invalid-instruction hook, INT 6 (CD 06) too,
        and leaves EIP at the INT, where for any other INT n it moves EIP past it. If INT 6 is
        what raised it, move EIP past it as for the others and say so: it is a software
        interrupt (gate DPL checked, the next instruction's address pushed), not a #UD fault."""
        if not self.cpu.exception_is_software:
            return False
        insn = self.current_insn()
        if insn is None or insn.mnemonic != "int" or insn.raw[-2:] != b"\xcd\x06":
            return False
        self.cpu.eip = self.cpu.eip + insn.size
        return True

    def current_insn(self) -> Insn | None:
        cpu = self.cpu
        code = self.fetch(cpu.linear_pc())
        return self.disasm.decode(code, cpu.eip, cpu.code_bits) if code else None

    def guest_selector(self, seg: int) -> int:
        """The segment selector as the guest sees it (engines that compress rings override)."""
        return self.cpu.segs[seg].selector

    def describe_pc(self) -> tuple[int, str]:
        cpu = self.cpu
        insn = self.current_insn()
        where = f"{self.guest_selector(CS):04x}:{cpu.eip:08x}"
        limit = cpu.segs[CS].limit
        if cpu.eip > limit:
            where += (f" (EIP past the CS limit {limit:#x}: the guest ran off the end of its code "
                      "segment; a real CPU raises #GP there, this machine, like QEMU, does not "
                      "check the limit on sequential fetch)")
        if insn is None:
            code = self.fetch(cpu.linear_pc())
            return cpu.eip, f"{where}  {code[:8].hex(' ') or 'unreadable'} (does not decode)"
        return cpu.eip, f"{where}  {insn.raw.hex(' ')}  {insn}"

    # ----- machine-level failures ---------------------------------------------------------------
    def on_unmapped(self, access: Access, address: int, size: int, value: int) -> bool:
        self.unmapped = (access, address, size)
        return False

    def machine_error(self, err: int) -> None:
        """The run ended on an error: a fill the MMU refused (an access with nothing behind
        it), or a machine-level failure that ends the run."""
        refusal = self.mmu.take_refusal()
        if isinstance(refusal, Unbacked):
            self.on_unmapped(UNBACKED_ACCESS.get(refusal.access, Access.READ), refusal.physical,
                             self._access_size(refusal.access), 0)
        self.machine_stopped(err)

    def _access_size(self, access: int) -> int:
        """Bytes of the refused access (the TLB fill is not told): 1 for a fetch, the memory
        operand's size for an explicit access, 4 for QEMU's implicit descriptor reads (a segment
        load or far transfer with no memory operand reads its descriptor as two dwords)."""
        if access == FILL_FETCH:
            return 1
        insn = self.current_insn()
        sizes = [op.size for op in insn.operands if op.kind == "mem"] if insn else []
        return sizes[0] if sizes else 4

    def machine_stopped(self, err: int) -> None:
        if self.unmapped is not None:
            access, address, size = self.unmapped
            kind = {Access.WRITE: "write", Access.FETCH: "instruction fetch"}.get(access, "read")
            message = outside_ram(kind, address, size, self.vm.memory.size)
        else:
            message = f"the machine stopped on {describe_run_error(err)}"
        self.vcpu.finish(RunState.GUEST_FAULT, message)
