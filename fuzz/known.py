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
GP = 13


def engine_gp0_where_native_differs(divergence) -> bool:
    """The engine's first differing record is a #GP(0) event (native's is another record: a
    later event, another fault address, or the next checkpoint)."""
    theirs = divergence.records[1]
    return (theirs is not None and theirs.tag == EVENT and theirs.raw[2] == GP
            and theirs.raw[3:7] == bytes(4))


KNOWN: tuple[KnownDivergence, ...] = (
    known("trap-user-frame-flags", "trap",
          "an event from guest ring 3 (or later, from ring 0 after one) pushes a frame whose IF "
          "and IOPL are the real ones (IF 1, IOPL 0) or stale, not the virtual IF and IOPL the "
          "guest set with IRET/POPF before entering ring 3", when=frame_differs_in_if_iopl_only),
    known("trap-retf-guest-rpl1", "trap",
          "RETF to a code selector with RPL 1 that the guest pushed itself at CPL 0: trap cannot "
          "tell it from the CS the CPU pushed for a far CALL at real ring 1 (guest ring 0), so it "
          "reads both as ring 0 and returns, where the machine raises #GP(selector); reading "
          "RPL 1 as ring 0 is what makes the common far CALL / RETF pair work under trap",
          op=r"push dword 0x(?:9|41)\npush dword \.t\nretf"),
    known("trap-iret-guest-rpl1", "trap",
          "IRETD at CPL 0 to a code selector with RPL 1 (a DPL-0 segment): the same reading as "
          "trap-retf-guest-rpl1 (RPL 1 is guest ring 0 under trap), so trap returns where the "
          "machine raises #GP(selector)",
          op=r"push dword 0x[0-9a-f]+\npush dword 0x(?:9|41)\npush dword \.t\niretd"),
    known("trap-user-pushf", "trap",
          "PUSHF at guest ring 3 pushes the real IF (1) and IOPL (0): user code is neither "
          "trapped nor audited, so the virtual flags never show",
          op=r"^\.user:$(?s:.*)^pushfd$"),
    known("trap-user-iopl3-cli-sti", "trap",
          "CLI/STI at guest ring 3 after the guest set IOPL 3 (by IRET or POPF at ring 0): the "
          "machine runs them; under trap ring 3 runs on the real IOPL 0, the virtual IOPL 3 "
          "never reaches it (an IRET from real ring 1 cannot raise IOPL), so they raise #GP(0), "
          "reflected to the guest (found by the campaign from seed 8000000: seeds 8002689, "
          "8002936, 8003124, 8004464, 8006652)",
          op=r"^\.user:$(?s:.*)^(?:cli|sti)$", when=engine_gp0_where_native_differs),
    known("hypervisor-cpuid-leaves", "trap bt vtx",
          "by design: CPUID leaves 0x40000000.. name this VMM (the bare machine has none)",
          op=r"^mov eax, 0x40000000\nxor ecx, ecx\ncpuid$"),
)


def match_known(divergence, message: str) -> KnownDivergence | None:
    return next((entry for entry in KNOWN if entry.matches(divergence, message)), None)
