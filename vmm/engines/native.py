"""The reference engine: the guest on the bare machine at real ring 0, no VMM.

Devices are wired straight to the CPU's I/O hooks and exceptions and interrupts are delivered by
the architectural delivery code acting as hardware. This is the behaviour every other engine must
reproduce (Popek and Goldberg's equivalence property). The hardware's INTR sampling is modelled by
the translation-time scanner: while an interrupt is held by IF = 0, the CPU stops in front of the
instructions that can set IF (STI, POPF, IRET); RDMSR/WRMSR stop too, so that the platform's
MSRs (IA32_APIC_BASE) reach their device.
"""
from __future__ import annotations

from emu.cpu import FLAG_IF
from emu.events import BP, OF, UD, EventDelivery, EventKind, GuestView
from vmm.engines.base import EngineBase
from vmm.engines.scanner import IF_SETTERS, CodeScanner, SiteKind
from vmm.run_state import RunState

RUNNING = RunState.RUNNING
HARDWARE, INT_N = EventKind.HARDWARE_EXCEPTION, EventKind.SOFTWARE_INTERRUPT


class NativeEngine(EngineBase):
    """Bare hardware: nothing is intercepted, so there are no VM exits."""
    name = "native"

    def attach(self, vcpu) -> None:
        super().attach(vcpu)
        self.events = EventDelivery(self.cpu, self.lin, GuestView(self.cpu))
        self.scanner = self.window_scanner = CodeScanner(
            self.cpu, self.fetch, self.disasm, self.classify, lambda: True, owner="native")
        self.scanner.start()

    @staticmethod
    def classify(insn) -> SiteKind | None:
        """IF-setting instructions (window sites), and RDMSR/WRMSR: Unicorn cannot hook them,
        and the platform answers some MSRs itself (IA32_APIC_BASE)."""
        if insn.mnemonic in ("rdmsr", "wrmsr"):
            return SiteKind.CALLOUT
        return SiteKind.WINDOW if insn.mnemonic in IF_SETTERS else None

    # ----- CpuHandler ---------------------------------------------------------------------------
    def on_interrupt(self, intno: int) -> None:
        """A vector other than 3 and 4 raised by an instruction can only be INT n's (CD nn);
        INT3/INTO and INT 3/INT 4 differ in kind, so those are looked up."""
        error_code, software = self.cpu.take_exception()
        if not software:
            kind = HARDWARE
        elif intno == BP or intno == OF:
            kind = self.software_event(intno)[0]
        else:
            kind = INT_N
        self.events.deliver(intno, kind, error_code)

    def on_in(self, port: int, size: int) -> int:
        if self.vcpu.state is not RUNNING:
            return (1 << 8 * size) - 1  # the run has ended: Unicorn finishing its block
        return self.vm.pio.read(port, size)

    def on_out(self, port: int, size: int, value: int) -> None:
        if self.vcpu.state is RUNNING:  # else the run has ended: no device sees it
            self.vm.pio.write(port, size, value)

    def make_apic_access(self, lapic, take_exit) -> None:
        """No intercepts: an APIC access reaches the model directly (no ApicAccess)."""

    def on_mmio_read(self, address: int, size: int) -> int:
        return self.vm.mmio.read(address, size)

    def on_mmio_write(self, address: int, size: int, value: int) -> None:
        if self.vcpu.state is RUNNING:  # else the run has ended: no device sees it
            self.vm.mmio.write(address, size, value)

    def on_cpuid(self) -> bool:
        return False

    def on_invalid_opcode(self) -> bool:
        if self.int6_past():
            self.on_interrupt(UD)
        else:
            self.events.deliver(UD, EventKind.HARDWARE_EXCEPTION)
        return True

    # ----- run loop -----------------------------------------------------------------------------
    def interrupt_window(self) -> bool:
        return bool(self.cpu.system_flags & FLAG_IF)

    def inject_external(self, vector: int) -> None:
        self.events.deliver(vector, EventKind.EXTERNAL)

    def after_run(self) -> None:
        """HLT at ring 0 simply executes: the run ends with the CPU halted. (A scan that found
        a window site to arm stopped the run too.)"""
        self.scanner.arm()
        site = self.scanner.callout_at(self.cpu.linear_pc())
        if site is not None and self.scanner.revalidate(site):
            self.complete_msr_access(site.insn)
        elif self.cpu.halted:
            self.vcpu.halted = True
