"""The VT-x-style engine: VMCS execution controls decide what exits, every exit carries its SDM
reason and qualification, events are injected on entry, EPT violations reach MMIO devices."""
from __future__ import annotations

import pytest

from conftest import PROGRAMS, run_guest, trapvisor
from vmm.observers import ExitCallback
from vmm.vmcs import ExitReason as R

PRIVILEGED = PROGRAMS / "privileged.asm"
ALL_EXITS = "cr3,cr3-store,cr0=0xffffffff,cr4=0xffffffff,invlpg,msr,dt,dr,wbinvd"


def traced(spec, engine="vtx", **options):
    exits = []
    run = run_guest(spec, engine, observers=[ExitCallback(lambda e, o: exits.append(e))],
                    **options)
    return run, exits


def test_every_control_exits_and_the_guest_cannot_tell():
    native = run_guest(PRIVILEGED, "native")
    run, exits = traced(PRIVILEGED, exit_on=ALL_EXITS)
    assert run.result.ok, run.result.report()
    assert run.output == native.output
    seen = {(e.reason, e.detail) for e in exits}
    for reason, detail in [(R.CR_ACCESS, "mov cr0, eax"), (R.CR_ACCESS, "mov cr3, eax"),
                           (R.CR_ACCESS, "mov eax, cr3"), (R.CR_ACCESS, "lmsw ax"),
                           (R.CR_ACCESS, "clts"), (R.DR_ACCESS, "mov dr0, eax"),
                           (R.MSR_WRITE, "wrmsr"), (R.MSR_READ, "rdmsr"),
                           (R.LDTR_TR_ACCESS, "ltr ax"), (R.WBINVD, "wbinvd")]:
        assert (reason, detail) in seen, (reason, detail)
    assert any(e.reason is R.INVLPG for e in exits)
    assert any(e.reason is R.GDTR_IDTR_ACCESS and e.detail.startswith("lgdt") for e in exits)


def test_cr_access_qualifications_follow_the_sdm():
    _, exits = traced(PRIVILEGED, exit_on="cr3,cr3-store,cr0=0x8")
    qualification = {e.detail: e.qualification for e in exits if e.reason is R.CR_ACCESS}
    assert qualification["mov cr3, eax"] == 0x03           # CR3, MOV to CR, EAX
    assert qualification["mov eax, cr3"] == 0x13           # CR3, MOV from CR, EAX
    assert qualification["lmsw ax"] == 0x30 | 0xB << 16    # LMSW, source data 0xb
    assert qualification["clts"] == 0x20                   # CLTS: exits once TS is shadowed set


def test_default_controls_let_cr_and_msr_accesses_run_without_exits():
    run, exits = traced(PRIVILEGED)
    assert run.result.ok
    assert {e.reason for e in exits} <= {R.IO_INSTRUCTION, R.CPUID, R.HLT}


def test_exception_bitmap_turns_a_divide_error_into_an_exit_and_reinjects_it():
    native = run_guest("nano-divzero", "native")
    quiet, quiet_exits = traced("nano-divzero")
    run, exits = traced("nano-divzero", exit_on="exception=0")
    assert run.output == native.output == quiet.output
    divides = [e for e in exits if e.reason is R.EXCEPTION_NMI]
    assert divides and all(e.intr_info == 0x80000300 for e in divides)  # #DE, hardware, valid
    assert not [e for e in quiet_exits if e.reason is R.EXCEPTION_NMI]


def test_vmcall_exits_with_its_reason():
    run, exits = traced(PROGRAMS / "vmcall.asm")
    assert run.result.ok and run.text == "2\n"
    assert [e.reason for e in exits if e.reason is R.VMCALL] == [R.VMCALL]



@pytest.mark.parametrize("argv, message", [
    (["--engine", "vtx", "--exit-on", "bogus"], "unknown exit 'bogus'"),
    (["--engine", "trap", "--exit-on", "cr3"], "needs --engine vtx"),
    (["--engine", "vtx", "--exit-on", "cr0=zz"], "is not a number"),
])
def test_bad_exit_on_is_refused(argv, message):
    proc = trapvisor("run", "hello", *argv)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
