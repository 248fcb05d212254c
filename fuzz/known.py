"""Divergences already known and not fixed yet: each names the engines it affects, matches the
op where the runs part (a regular expression over the op's assembly) and/or the engine's run
message, and says why it happens. A divergence matched here is reported as known, not as a
failure; when a fix lands its entry must go (tests/fuzz/ holds a reproducer per entry, whose
test fails once the divergence is gone). Match precisely: a broad pattern hides new bugs.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

from fuzz.records import EVENT


@dataclass(frozen=True)
class KnownDivergence:
    name: str
    engines: frozenset[str]
    reason: str
    op: str = ""                                   # a regular expression over the op's text
    message: str = ""                              # a regular expression over the run message
    when: Callable[[object], bool] | None = None   # a finer test of the Divergence

    def matches(self, divergence, message: str) -> bool:
        return bool(divergence.engine in self.engines
                and (not self.op or re.search(self.op, divergence.op_text, re.MULTILINE))
                and (not self.message or re.search(self.message, message))
                and (self.when is None or self.when(divergence)))


def known(name: str, engines: str, reason: str, **match) -> KnownDivergence:
    return KnownDivergence(name, frozenset(engines.split()), reason, **match)


def clears_cr0_et(divergence) -> bool:
    """MOV CR0 of the value read back with CR0.ET (bit 4) toggled, i.e. cleared."""
    toggle = re.search(r"mov eax, cr0\nxor eax, (0x[0-9a-f]+)\nmov cr0, eax", divergence.op_text)
    return toggle is not None and int(toggle.group(1), 16) & 0x10 != 0


def frame_differs_in_if_iopl_only(divergence) -> bool:
    """Both runs recorded the same event, whose frames differ only in EFLAGS.IF and IOPL."""
    ours, theirs = divergence.records
    if ours is None or theirs is None or ours.tag != EVENT or theirs.tag != EVENT:
        return False
    if ours.raw[:11] != theirs.raw[:11]:
        return False
    flags = int.from_bytes(ours.raw[11:15], "little") ^ int.from_bytes(theirs.raw[11:15], "little")
    return flags & ~IF_IOPL == 0


IF_IOPL = 0x3200

FAR_TO = r"(?:(?:jmp|call) {sel}:|push dword {sel}\npush dword \.t\n(?:retf|iretd))"
KNOWN: tuple[KnownDivergence, ...] = (
    known("mov-cr-reserved", "trap bt",
          "MOV to/from CR1, CR5, CR6 or CR7 must raise #UD; trap's and bt's emulators look the "
          "CR number up and fail (KeyError / IndexError), so the run ends with vmm-error",
          op=r"; mov (?:eax, cr[1567]|cr[1567], eax)$"),
    known("descriptor-table-outside-ram", "native trap bt vtx",
          "an IDT or GDT based beyond guest RAM: the event delivery and descriptor reads use "
          "the VMM's physical reads, which raise BusError (vmm-error, or a crash under bt) where "
          "the machine would read all-ones",
          op=r"mov dword \[ss:0x[0-9a-f]+\], 0x(?:10000000|fffff000)\nl[gi]dt "),
    known("popf-reserved-bits", "bt",
          "bt's POPF callout stores the popped value's reserved EFLAGS bits (3, 5, 15, 22-31) "
          "instead of keeping them fixed (bit 1 set, the others clear)",
          op=r"^popfw?d?$"),
    known("cr0-et-cleared", "trap bt",
          "MOV CR0 with ET (bit 4) clear: the processor keeps ET = 1 (hard-wired since the "
          "486); trap's and bt's shadow CR0 takes the written 0", when=clears_cr0_et),
    known("ltr-null", "trap bt",
          "LTR with a null selector: QEMU (so native and vtx) loads a null TR without a fault, "
          "where the SDM says #GP(0), which trap and bt raise: the reference is wrong here",
          op=r"^mov ax, 0x0\nltr ax$"),
    known("far-transfer-rpl-above-cpl", "trap bt",
          "far JMP/CALL/RETF/IRET to a DPL-0 code selector with RPL 1 or 3 at CPL 0: the machine "
          "raises #GP(selector) (or, to a conforming segment, goes there keeping CPL 0); trap "
          "and bt emulate the transfer or report a different error code",
          op=FAR_TO.format(sel=r"0x(?:9|b|43)")),
    known("far-transfer-ldt-without-ldt", "trap bt",
          "far transfer to an LDT selector (TI = 1) while LDTR is null: the machine raises "
          "#GP(selector); trap and bt stop the run with a guest fault",
          op=FAR_TO.format(sel=r"0x(?:c|f)")),
    known("far-transfer-system-descriptor", "trap bt",
          "far transfer through a call gate or a TSS (task switch): not modelled by trap's and "
          "bt's far-transfer emulation (documented limit), which stops the run with a guest "
          "fault", op=FAR_TO.format(sel=r"0x(?:28|58|30)")),
    known("trap-user-frame-flags", "trap",
          "an event from guest ring 3 (or later, from ring 0 after one) pushes a frame whose IF "
          "and IOPL are the real ones (IF 1, IOPL 0) or stale, not the virtual IF and IOPL the "
          "guest set with IRET/POPF before entering ring 3", when=frame_differs_in_if_iopl_only),
    known("trap-user-pushf", "trap",
          "PUSHF at guest ring 3 pushes the real IF (1) and IOPL (0): user code is neither "
          "trapped nor audited, so the virtual flags never show",
          op=r"^\.user:$(?s:.*)^pushfd$"),
    known("bt-smsw-r32", "bt",
          "SMSW r32: the machine (QEMU) writes CR0's low 16 bits and leaves bits 31:16 of the "
          "register as they were; bt's callout writes the whole register", op=r"^smsw eax$"),
    known("hypervisor-cpuid-leaves", "trap bt vtx",
          "by design: CPUID leaves 0x40000000.. name this VMM (the bare machine has none)",
          op=r"^mov eax, 0x40000000\nxor ecx, ecx\ncpuid$"),
)


def match_known(divergence, message: str) -> KnownDivergence | None:
    return next((entry for entry in KNOWN if entry.matches(divergence, message)), None)
