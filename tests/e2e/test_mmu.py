"""The MMU under every engine: tests/programs/mmu.asm checks #PF error codes and CR2 (not
present, U/S, R/W with CR0.WP, fetches), A/D bits, a 4 MiB page, INVLPG after a PTE edit and CR3
switches against the SDM in the guest itself; every engine must pass every check and print what
native printed. Plus what the fill handler routes: stores to code (self-modifying code keeps
working while data pages are granted store-fast) and frames used both ways."""
from __future__ import annotations

import pytest
from conftest import PROGRAMS, run_guest

from vmm.observers import ExitCallback
from vmm.vmcs import ExitReason

EXPECTED_LINES = [
    "not present, supervisor read: error 0x0, CR2 0x50000123 ... ok",
    "not present, supervisor write: error 0x2, CR2 0x50000456 ... ok",
    "not present, user read: error 0x4, CR2 0x50000789 ... ok",
    "not present, user write: error 0x6, CR2 0x50000abc ... ok",
    "not present, supervisor fetch: error 0x0, CR2 0x50000010 ... ok",
    "supervisor page, user read: error 0x5, CR2 0x50001010 ... ok",
    "read-only page, user write: error 0x7, CR2 0x50002010 ... ok",
    "read-only page, supervisor write, WP=1: error 0x3, CR2 0x50002018 ... ok",
    "page faults: 8",
]


@pytest.fixture(scope="module")
def native_output() -> str:
    run = run_guest(PROGRAMS / "mmu.asm", "native")
    assert run.result.ok and run.result.status == 0, run.text + run.result.report()
    return run.text


def test_native_matches_the_sdm(native_output):
    for line in EXPECTED_LINES:
        assert line in native_output.splitlines()
    assert "FAILED" not in native_output


def test_every_engine_prints_what_native_printed(engine, native_output):
    run = run_guest(PROGRAMS / "mmu.asm", engine)
    assert run.result.ok and run.result.status == 0, run.text + run.result.report()
    assert run.text == native_output


def test_self_modifying_code_under_store_fast_grants(engine):
    run = run_guest(PROGRAMS / "selfmod.asm", engine)
    assert run.result.ok and run.result.status == 0, run.text + run.result.report()


def test_vtx_without_ept_prints_what_native_printed(native_output):
    """--ept off: shadow paging under VT-x; the guest's own #PFs are EXCEPTION_NMI exits that
    are reflected, the hidden ones exits that the VMM absorbs."""
    exits = []
    run = run_guest(PROGRAMS / "mmu.asm", "vtx", ept=False,
                    observers=[ExitCallback(lambda e, o: exits.append(e))])
    assert run.result.ok and run.result.status == 0, run.text + run.result.report()
    assert run.text == native_output
    faults = [e for e in exits if e.reason is ExitReason.EXCEPTION_NMI]
    reflected = [e for e in faults if not e.hidden_fault]
    assert len(reflected) == 8                                   # the guest's 8 #PFs
    assert all(e.intr_info & 0xFF == 14 for e in faults)
    assert len(faults) > len(reflected)                          # and hidden ones
    assert any(e.reason is ExitReason.CR_ACCESS for e in exits)  # CR3 loads exit
    assert any(e.reason is ExitReason.INVLPG for e in exits)


def test_ept_off_needs_vtx():
    with pytest.raises(ValueError, match="--ept off"):
        run_guest(PROGRAMS / "mmu.asm", "trap", ept=False)
