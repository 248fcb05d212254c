"""What trap-and-emulate cannot see: a translation-time audit of guest kernel code that lists the
sensitive instructions which do not fault at ring 1 (Robin & Irvine's list for the Pentium), and
the report a trap run prints about them. It notes sites; it never intercepts anything.
"""
from __future__ import annotations

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
}


def audit_scanner(engine) -> CodeScanner:
    """Note (without intercepting) each sensitive instruction that will not fault in guest
    kernel code: trap-and-emulate cannot virtualize it, and the run's report says so."""
    return CodeScanner(engine.cpu, engine.fetch, engine.disasm, untrapped,
                       lambda: engine.deprivileged.protected and engine.cpu.cpl == 1,
                       owner="audit")


def untrapped(insn) -> SiteKind | None:
    if insn.mnemonic in ("pushf", "pushfd", "popf", "popfd"):
        return SiteKind.UNTRAPPED
    return SiteKind.UNTRAPPED if sensitive_emulator_for(insn) is not None else None


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
