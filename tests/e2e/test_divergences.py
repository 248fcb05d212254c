"""Instructions whose results once differed between the bare machine and trap or bt (an outside
fuzz campaign found them): every engine prints the bare machine's lines (tests/programs/
divergences.asm), except what trap documents it cannot see at ring 1 (Robin & Irvine)."""
from __future__ import annotations

import pytest

from conftest import PROGRAMS, run_guest
from vmm.run_state import RunState

GUEST = PROGRAMS / "divergences.asm"
# PUSHFD at ring 1 shows the real IF under trap, and a far JMP to DPL-1 code passes the real
# ring 1's check (neither is trapped; both are listed in its fidelity report)
TRAP_BLIND = ("POPFD of reserved bits", "far JMP to DPL-1 code at CPL 0")
_native: list[str] = []


def lines(engine: str) -> list[str]:
    run = run_guest(str(GUEST), engine, max_exits=20000)
    assert run.result.state is RunState.EXITED and run.result.status == 0, run.result.report()
    return run.text.splitlines()


def native() -> list[str]:
    if not _native:
        _native.extend(lines("native"))
    return _native


def test_the_bare_machine_gives_the_architectural_results():
    out = dict(line.split(": vec=", 1) for line in native()[1:])
    assert out["SMSW after MOV CR0 = 1"].endswith("val=0x00000011")            # ET reads 1
    assert out["MOV CR0 with ET clear, then MOV from CR0"].endswith("val=0x00000011")
    assert out["SMSW r32 with CR0 bits 16 and 18"].endswith("val=0xdead0011")   # 15:0 only
    for name in ("MOV EAX, CR1", "MOV CR5, EAX", "MOV EAX, CR7", "MOV CS, AX"):
        assert out[name].startswith("0x06 ")                                    # #UD
    assert out["real-mode MOV CR1, CR6 (#UD count in val)"].endswith("val=0x00000002")
    assert out["far JMP 0x0b:x (RPL 3 > CPL)"].startswith("0x0d err=0x0008")
    assert out["far CALL 0x0b:x (RPL 3 > CPL)"].startswith("0x0d err=0x0008")
    assert out["IRETD to CS 0x0f with no LDT"].startswith("0x0d err=0x000c")
    assert out["LTR 0, then STR"] == "0xff err=0x0000 val=0x00000000"           # no fault
    assert out["far JMP to an LDT descriptor"].startswith("0x0d err=0x0018")
    assert out["far JMP to an interrupt gate"].startswith("0x0d err=0x0038")
    assert out["far CALL to a busy TSS"].startswith("0x0d err=0x0040")
    assert out["RETF to an LDT descriptor"].startswith("0x0d err=0x0018")
    assert out["far CALL through a call gate"].endswith("val=0x00006a7e")
    assert out["far JMP through a call gate"].endswith("val=0x00003a7e")
    assert out["POPFD of reserved bits"].endswith("val=0x00000002")
    assert out["LTR, far JMP to 16-bit code"].endswith("val=0x00001616")
    assert out["far CALL to a conforming DPL-0 segment"] == "0xff err=0x0000 val=0x0000c0f0"
    assert out["far JMP to DPL-1 code at CPL 0"].startswith("0x0d err=0x0058")


@pytest.mark.parametrize("engine", ["trap", "bt", "vtx"])
def test_every_engine_gives_the_bare_machines_results(engine):
    blind = TRAP_BLIND if engine == "trap" else ()
    expected = [line for line in native() if not line.startswith(blind)]
    assert [line for line in lines(engine) if not line.startswith(blind)] == expected


def test_trap_lists_the_far_jmp_to_ring_1_code_it_cannot_see():
    """Ring compression (fuzz: trap-ring1-code-reachable): the guest's ring 0 runs on real ring
    1, so a far JMP to DPL-1 code passes the real check; trap's fidelity report names it."""
    run = run_guest(str(GUEST), "trap", max_exits=20000)
    listed = [line for line in run.result.fidelity.splitlines() if "ljmp 0x58:" in line]
    assert len(listed) == 1 and "reaches DPL-1 code" in listed[0], run.result.fidelity
    assert not any("ljmp 0x8:" in line or "ljmp 0x28:" in line
                   for line in run.result.fidelity.splitlines())

@pytest.mark.parametrize("engine", ["native", "trap", "bt", "vtx"])
def test_a_triple_fault_while_the_vmm_emulates_a_segment_load_ends_the_run(engine):
    """A GDT of zeroed descriptors, then MOV DS (fuzz: bt-triple-fault-escapes): under bt the
    load is a callout whose #GP escalates to a triple fault inside the VMM's work after a run;
    the vCPU's error boundary ends the run as the machine does, with no Python exception."""
    run = run_guest(str(PROGRAMS / "zeroed-gdt.asm"), engine)
    assert run.result.state is RunState.TRIPLE_FAULT, run.result.report()
    assert run.text == "Z\n"


@pytest.mark.parametrize("engine", ["native", "trap", "bt", "vtx"])
def test_a_return_to_ring_3_nulls_the_data_segments_ring_3_may_not_use(engine):
    """IRET to ring 3 with DS = 0x0003 and ES = 0x10 (fuzz: bt-outer-return-null-selector): both
    are loaded with the null selector 0, as the machine does, not left with their RPL."""
    run = run_guest(str(PROGRAMS / "outer-return.asm"), engine)
    assert run.result.state is RunState.EXITED, run.result.report()
    assert run.text == "ds=0000 es=0000\n"
