"""The binary-translation engine (VMware/VirtualBox style): the guest kernel runs deprivileged as
under trap, but its code is scanned before it first runs and every sensitive instruction, trapping
or not, is translated, so the guest cannot tell (Popek & Goldberg's equivalence is restored).

Translations (vmm/engines/scanner.py finds the sites):
- callout: the VMM emulates the instruction on virtual state (SGDT, SMSW, PUSHF/POPF, MOV from
  CS/SS, LAR/LSL/VERR/VERW, MOV CR, far transfers, IRET, INT n, ...) without ending the run:
  a privileged instruction (and in virtual-8086 code an IOPL-sensitive one) faults at the
  deprivileged ring anyway, and trap's #GP hook carries it out with the site's plan; any other
  is first a stop before the instruction (a Unicorn exit) and, once it has run, a code hook
  bounded to its address (up to MAX_HOOKED sites: each hook costs every counted instruction).
  A hooked PUSHF is no exit at all: its hook pushes the virtual EFLAGS image itself (xv6 runs
  ~11M PUSHFDs in its typed session, ~8M of them in mycpu() while its scheduler spins);
- inline: CLI and STI in guest kernel code run in place, with no exit. Guest ring 0 runs on real
  ring 1 with the real IOPL at 1, so the real EFLAGS.IF *is* the guest's virtual IF (the emulated
  CPU has no hardware interrupt line: the VMM alone reads IF, to decide injection). PUSHF/POPF,
  which would reveal the real IOPL, are callouts;
- io: IN/OUT reach the device model synchronously through the CPU's I/O hook.
Guest user code (real ring 3) is not translated: what it can observe already matches.
"""
from __future__ import annotations

from emu.cpu import CS, ESP, FLAG_IF, FLAG_VM, IOPL_MASK, IOPL_SHIFT, SS
from emu.paging import BusError, Fault
from vmm.engines.base import MAX_INSN
from vmm.engines.deprivilege import DeprivilegedGuest, TrapView
from vmm.engines.emulate import (
    emulate_cli,
    emulate_clts,
    emulate_hlt,
    emulate_int,
    emulate_invalid,
    emulate_invlpg,
    emulate_iret,
    emulate_lldt_ltr,
    emulate_lmsw,
    emulate_load_table,
    emulate_mov_cr,
    emulate_mov_dr,
    emulate_nop,
    emulate_popf,
    emulate_pushf,
    emulate_rdmsr,
    emulate_sti,
    emulate_wrmsr,
    emulator_for,
)
from vmm.engines.plans import Plan, make_plan
from vmm.engines.scanner import CodeScanner, Site, SiteKind
from vmm.engines.sensitive import sensitive_emulator_for
from vmm.engines.trap import TrapEngine
from vmm.engines.walk_memo import WalkMemo
from vmm.vmcs import ExitReason

R = ExitReason
IO_MNEMONICS = frozenset(("in", "out", "insb", "insw", "insd", "outsb", "outsw", "outsd"))
DESCRIPTOR_TABLE_REASONS = {"sgdt": R.GDTR_IDTR_ACCESS, "sidt": R.GDTR_IDTR_ACCESS,
                            "sldt": R.LDTR_TR_ACCESS, "str": R.LDTR_TR_ACCESS}
# #GP at any CPL above 0, whatever the operands (Intel SDM Vol. 2: "CPL is greater than 0").
PRIVILEGED = frozenset((emulate_mov_cr, emulate_invalid, emulate_mov_dr, emulate_hlt, emulate_clts,
                        emulate_lmsw, emulate_rdmsr, emulate_wrmsr, emulate_invlpg, emulate_nop,
                        emulate_load_table, emulate_lldt_ltr))
# #GP in virtual-8086 mode at IOPL < 3 (the deprivileged real-mode guest runs at IOPL 0).
IOPL_SENSITIVE = frozenset((emulate_cli, emulate_sti, emulate_pushf, emulate_popf, emulate_iret,
                            emulate_int))


class BtView(TrapView):
    """In protected mode the real IF is the virtual IF; the real IOPL is 1 in guest kernel mode
    (so CLI/STI run in place) and the guest's own IOPL in guest user mode."""

    def flags(self) -> int:
        if not self.protected():
            return super().flags()
        real = self.cpu.eflags & ~(IOPL_MASK | FLAG_VM)
        self.state.interrupt_flag = bool(real & FLAG_IF)
        return real | (self.state.iopl << IOPL_SHIFT)

    def set_flags(self, value: int) -> None:
        if not self.protected():
            super().set_flags(value)
            return
        self.state.interrupt_flag = bool(value & FLAG_IF)
        self.state.iopl = (value >> IOPL_SHIFT) & 3
        self.cpu.eflags = value & ~(IOPL_MASK | FLAG_VM)
        self.sync_iopl()

    def sync_iopl(self) -> None:
        real_iopl = max(1, self.state.iopl) if self.cpu.cpl == 1 else self.state.iopl
        self.cpu.set_system_flags(real_iopl << IOPL_SHIFT, IOPL_MASK)

    def returned_selector(self, selector: int) -> int:
        """Unchanged: PUSH CS and every far CALL in guest kernel code are callouts, so only
        the guest's own selectors reach its stack."""
        return selector

    def load_code(self, selector, desc, cpl) -> None:
        super().load_code(selector, desc, cpl)
        self.sync_iopl()

    def load_stack(self, selector, desc) -> None:
        super().load_stack(selector, desc)
        self.sync_iopl()


class BtGuest(DeprivilegedGuest):
    view_class = BtView

    def take_over(self) -> None:
        """A protected-mode hand-over: the virtual IF lives in the real IF from the start."""
        super().take_over()
        if self.protected:
            self.cpu.set_system_flags(FLAG_IF if self.state.interrupt_flag else 0, FLAG_IF)
            self.view.sync_iopl()

    def enter_protected_mode(self) -> None:
        """Leaving v8086 (where IF is shadowed): the virtual IF moves into the real IF."""
        super().enter_protected_mode()
        self.cpu.set_system_flags(FLAG_IF if self.state.interrupt_flag else 0, FLAG_IF)
        self.view.sync_iopl()


class BtEngine(TrapEngine):
    """Deprivileged guest kernel whose code is scanned and translated before it runs."""
    name = "bt"
    guest_class = BtGuest

    def attach(self, vcpu) -> None:
        self.walks = WalkMemo(vcpu.vm.lin)
        super().attach(vcpu)

    def make_scanner(self) -> CodeScanner:
        self.window_scanner = CodeScanner(self.cpu, self.fetch, self.disasm, self.classify,
                                          self.translating, owner="bt", traps=self.traps,
                                          cache=True)
        return self.window_scanner

    def translating(self) -> bool:
        """Guest kernel code (real ring 1) and guest real mode (v8086) are translated."""
        return self.cpu.cpl != 3 or not self.deprivileged.protected

    def classify(self, insn) -> SiteKind | None:
        mnemonic = insn.mnemonic
        if mnemonic in IO_MNEMONICS:
            return SiteKind.IO
        if mnemonic in ("cli", "sti") and self.deprivileged.protected:
            return SiteKind.INLINE
        if emulator_for(insn) is not None or sensitive_emulator_for(insn) is not None:
            return SiteKind.CALLOUT
        return None

    def traps(self, insn) -> bool:
        """The callout faults (#GP) where it runs, into trap's hook: no stop, no code hook."""
        emulator = emulator_for(insn)
        return emulator in PRIVILEGED or (self.cpu.vm86 and emulator in IOPL_SENSITIVE)

    # ----- callouts -----------------------------------------------------------------------------
    def after_run(self) -> None:
        """The run ended: a scan may have found sites to arm, or the CPU stopped at a callout
        site armed as an exit. Once carried out there, the site is hooked for the next time."""
        scanner = self.scanner
        scanner.arm()
        linear = self.cpu.linear_pc()
        site = scanner.callout_at(linear)
        if site is not None and linear in scanner.armed and scanner.revalidate(site):
            self.vcpu.retire(1)
            self._carry_out(site)
            scanner.hook(site, self._hooked_callout)

    def _hooked_callout(self, linear: int) -> int | None:
        """The CPU is about to run a hooked site, inside the run (Unicorn has counted it): carry
        it out and go on after it. Guest user code at the same address, or other bytes there
        (another address space), run as they are."""
        site = self.scanner.sites.get(linear)
        if site is None or not self.translating() or not self.scanner.revalidate(site):
            return None
        self._carry_out(site)
        return self.cpu.eip

    def _carry_out(self, site: Site) -> None:
        """A callout, at a stop or in a hook alike: PUSHF in protected-mode kernel code in place,
        any other (or a PUSHF whose push faults) as an exit. So whether a site is hooked yet
        (which a snapshot does not keep) never changes the exits a run counts."""
        plan = self._site_plan(site)
        if not (plan.emulator is emulate_pushf and self.deprivileged.protected
                and self.cpu.cpl != 3 and self._push_flags(site, plan)):
            self._callout(site)

    def _push_flags(self, site: Site, plan: Plan) -> bool:
        """PUSHF translated in place: the virtual EFLAGS image goes on the stack inside the run,
        with no exit (as VMware's translator emits PUSHF as a short sequence pushing the virtual
        flags), through a remembered stack walk. Translated protected-mode code runs at real
        ring 1 or 2, so the store is a supervisor one. False if the push faults: the callout's
        exit then reflects the fault."""
        cpu = self.cpu
        size = plan.insn.opsize >> 3
        mask = 0xFFFFFFFF if cpu.stack_bits == 32 else 0xFFFF
        esp = cpu.gpr[ESP]
        new = (esp - size) & mask
        image = self.deprivileged.view.flags() & ((1 << 8 * size) - 1)
        try:
            self.walks.write((cpu.segs[SS].base + new) & 0xFFFFFFFF,
                             image.to_bytes(size, "little"))
        except (Fault, BusError):
            return False
        cpu.gpr[ESP] = (esp & ~mask) | new
        site.hits += 1
        eip = cpu.eip_reg
        eip.value = (eip.value + plan.size) & plan.eip_mask
        return True

    def fetch(self, linear: int, length: int = MAX_INSN) -> bytes:
        """Instruction bytes (see EngineBase.fetch) through a remembered walk, as every in-run
        callout re-reads its site's bytes."""
        if length <= MAX_INSN:
            try:
                return self.walks.read(linear, length)
            except (Fault, BusError):
                pass
        return super().fetch(linear, length)

    def _plan(self) -> Plan | None:
        """A #GP in translated code at a callout site that traps: the site's plan and reason."""
        site = self.scanner.callout_at(self.cpu.linear_pc())
        if site is None or not site.traps or not self.scanner.revalidate(site):
            return super()._plan()
        site.hits += 1
        self.deprivileged.view.flags()
        return self._site_plan(site)

    def _callout(self, site: Site) -> None:
        site.hits += 1
        self.deprivileged.view.flags()  # bring the shadow IF up to date with the real (virtual) IF
        self.take_exit(self.instruction_exit(self._site_plan(site)))

    def _site_plan(self, site: Site) -> Plan:
        """The site's plan, made once. Sensitive instructions that trap-and-emulate would not
        see are reported with the reason VT-x gives them, or as BT_CALLOUT."""
        if site.plan is None:
            insn = site.insn
            emulator = emulator_for(insn) or sensitive_emulator_for(insn)
            plan = make_plan(insn, emulator, self.cpu.code_bits, self.cpu.segs[CS].flags)
            if plan.reason is R.EXCEPTION_NMI:
                plan = plan._replace(reason=DESCRIPTOR_TABLE_REASONS.get(insn.mnemonic,
                                                                         R.BT_CALLOUT))
            site.plan = plan
        return site.plan

    def on_in(self, port: int, size: int) -> int:
        self._count_io()
        return super().on_in(port, size)

    def on_out(self, port: int, size: int, value: int) -> None:
        self._count_io()
        super().on_out(port, size, value)

    def _count_io(self) -> None:
        site = self.scanner.sites.get(self.cpu.linear_pc())
        if site is not None:
            site.hits += 1

    # ----- run loop -----------------------------------------------------------------------------
    def interrupt_window(self) -> bool:
        if self.deprivileged.protected:
            return bool(self.cpu.system_flags & FLAG_IF)
        return self.deprivileged.state.interrupt_flag

    # ----- reporting ----------------------------------------------------------------------------
    def translation_report(self) -> str:
        """One line per translated site (for --stats): address, original bytes, kind, hits."""
        scanner = self.scanner
        summary = (f"Binary translation: {scanner.blocks} blocks scanned ({scanner.lookups} "
                   f"decoded from the cache) on {len(scanner.pages)} code pages, "
                   f"{scanner.rewritten} rewritten and rescanned, {len(scanner.sites)} sites "
                   f"({scanner.invalidated} dropped)")
        header = (f"{'guest address':>13}  {'original bytes':<24} {'kind':<8} {'via':<5} "
                  f"{'hits':>8}  insn")
        lines = [summary, "", header]
        for site in scanner.table():
            hits = "-" if site.kind is SiteKind.INLINE else str(site.hits)
            lines.append(f"{site.linear:#013x}  {site.raw.hex(' '):<24} {site.kind.value:<8} "
                         f"{callout_via(site):<5} {hits:>8}  {site.insn}")
        lines.append("(via: how a callout is reached now: trap = its own #GP, hook = a code hook "
                     "inside the run, exit = a stop before it)")
        if any(s.kind is SiteKind.INLINE for s in scanner.sites.values()):
            lines.append("(inline sites run in place with no VMM involvement: their executions "
                         "are not counted)")
        return "\n".join(lines)


def callout_via(site: Site) -> str:
    if site.kind is not SiteKind.CALLOUT:
        return "-"
    return "trap" if site.traps else "hook" if site.hook is not None else "exit"
