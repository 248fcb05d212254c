"""What trap-and-emulate cannot see: a translation-time audit of guest kernel code that lists the
sensitive instructions which do not fault at ring 1 (Robin & Irvine's list for the Pentium), and
the report a trap run prints about them. It notes sites; it never intercepts anything.

Ring compression adds one of its own: the guest's GDT is the real one, so a far JMP/CALL to a
code segment of DPL 1 passes the real CPU's privilege check at ring 1 where the guest's ring 0
gets #GP(selector); trap never sees it. A direct far transfer is listed when its selector names
such a descriptor as the scan finds the GDT; one through a memory operand cannot be judged there.
"""
from __future__ import annotations

from emu.paging import BusError, Fault
from vmm.engines.scanner import CodeScanner, SiteKind
from vmm.engines.sensitive import sensitive_emulator_for

UNTRAPPED_EFFECT = {
    "pushf": "pushes the real IF and IOPL", "pushfd": "pushes the real IF and IOPL",
    "popf": "cannot change IF or IOPL at CPL 1 (silently)",
    "popfd": "cannot change IF or IOPL at CPL 1 (silently)",
    "lar": "checks DPL against the real CPL 1", "lsl": "checks DPL against the real CPL 1",
    "verr": "checks DPL against the real CPL 1", "verw": "checks DPL against the real CPL 1",
    "sgdt": "reads the real GDTR (the guest's own here)",
    "sidt": "reads the real IDTR (the guest's own here)",
    "sldt": "reads the real LDTR (the guest's own here)",
    "str": "reads the real TR (the guest's own here)", "smsw": "reads the real CR0",
    "ljmp": "reaches DPL-1 code: the real CPL 1 passes the check (guest CPL 0: #GP)",
    "lcall": "reaches DPL-1 code: the real CPL 1 passes the check (guest CPL 0: #GP)",
}
RING_1 = 1


def audit_scanner(engine) -> CodeScanner:
    """Note (without intercepting) each sensitive instruction that will not fault in guest
    kernel code: trap-and-emulate cannot virtualize it, and the run's report says so."""
    guest = engine.deprivileged
    return CodeScanner(engine.cpu, engine.fetch, engine.disasm,
                       lambda insn: untrapped(insn, guest),
                       lambda: guest.protected and engine.cpu.cpl == 1, owner="audit")


def untrapped(insn, guest) -> SiteKind | None:
    if insn.mnemonic in ("pushf", "pushfd", "popf", "popfd"):
        return SiteKind.UNTRAPPED
    if insn.mnemonic in ("ljmp", "lcall"):
        return SiteKind.UNTRAPPED if reaches_ring_1_code(insn, guest) else None
    return SiteKind.UNTRAPPED if sensitive_emulator_for(insn) is not None else None


def reaches_ring_1_code(insn, guest) -> bool:
    """A direct far JMP/CALL whose selector names a code segment of DPL 1 in the guest's GDT or
    LDT (conforming or not: at guest CPL 0 either is #GP(selector))."""
    operands = insn.operands
    if len(operands) != 2:
        return False
    try:
        desc = guest.descriptor(operands[0].imm)
    except (Fault, BusError):
        return False
    return not desc.system and desc.is_code and desc.dpl == RING_1


def fidelity_report(scanner: CodeScanner) -> str:
    untrapped_sites = [s for s in scanner.table() if s.kind is SiteKind.UNTRAPPED]
    if not untrapped_sites:
        return ""
    lines = [f"trap could not virtualize {len(untrapped_sites)} sensitive instruction(s) in guest "
             "kernel code: they do not fault at ring 1, so they ran on the real CPU state "
             "(Robin & Irvine; run with --engine bt or vtx for equivalence):"]
    lines += [f"  {site.linear:#010x}  {site.raw.hex(' '):<20} {site.insn}  "
              f"{UNTRAPPED_EFFECT.get(site.insn.mnemonic, 'sees the real ring (RPL 1)')}"
              for site in untrapped_sites]
    return "\n".join(lines)
