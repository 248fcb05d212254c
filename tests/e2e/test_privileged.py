"""Every privileged instruction the trap engine emulates gives the bare machine's result."""
from __future__ import annotations

from conftest import PROGRAMS, run_guest

GUEST = PROGRAMS / "privileged.asm"


def test_trap_emulation_matches_the_bare_machine():
    native = run_guest(str(GUEST), "native")
    trap = run_guest(str(GUEST), "trap")
    assert native.result.status == trap.result.status == 0
    assert trap.text == native.text
    lines = dict(line.split(": ", 1) for line in native.text.splitlines()[1:])
    # CLTS clears TS (bit 3); LMSW 0xb sets MP|TS and cannot clear PE; CLTS again.
    assert lines["CR0 after CLTS, LMSW 0xb, CLTS"].split() == ["0x00000011", "0x0000001b",
                                                               "0x00000013"]
    assert lines["IA32_SYSENTER_CS"].strip() == "0x00000008"
    assert lines["LTR, then the TSS access byte"].strip() == "0x0000008b"   # busy 32-bit TSS
    assert lines["POP DS, LDS, LSS"].split() == ["0x00001234", "0x00080000", "0x00000010"]
    assert trap.result.exits > 30    # they really trapped
