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


PF_PATHS_LINES = [
    "dword load across into a not-present page: error 0x00, CR2 0x50001000 ... ok",
    "dword store across into a not-present page: error 0x02, CR2 0x50001000 ... ok",
    "bytes below the boundary after the faulting store: 0x11223344 ... ok",
    "REP MOVSD into a not-present page: error 0x02, CR2 0x50001000 ... ok",
    "at the fault: ECX 0x2, EDI 0x50001000, dword below the boundary 0xb2b2b2b2 ... ok",
    "4 MiB PDE with reserved bit 21: error 0x09, CR2 0x90000345 ... ok",
    "SMEP, supervisor fetch from a user page: error 0x11, CR2 0x50000020 ... ok",
    "#PF at ring 3 to a ring-1 handler whose ESP1 is not present: #DF, error 0x0, "
    "CR2 0x50002ffc, from ring 3 ... ok",
    "all checks passed",
]


@pytest.fixture(scope="module")
def pf_paths_native() -> str:
    run = run_guest(PROGRAMS / "pf_paths.asm", "native")
    assert run.result.ok and run.result.status == 0, run.text + run.result.report()
    return run.text


def test_page_faults_on_every_access_path_match_the_sdm(pf_paths_native):
    """tests/programs/pf_paths.asm: a #PF raised inside the TLB fill on page-crossing loads and
    stores, REP MOVSD, a reserved bit, SMEP, and during event delivery (#DF)."""
    assert pf_paths_native.splitlines()[1:] == PF_PATHS_LINES


@pytest.mark.parametrize("engine, ept", [("vtx", False), ("vtx", True), ("trap", True),
                                         ("bt", True)])
def test_page_fault_paths_under_every_engine(engine, ept, pf_paths_native):
    run = run_guest(PROGRAMS / "pf_paths.asm", engine, ept=ept)
    assert run.result.ok and run.result.status == 0, run.text + run.result.report()
    assert run.text == pf_paths_native


def test_a_guest_page_fault_does_not_end_the_cpu_run(monkeypatch):
    """nano-pgfault takes 2000 #PFs; under native each is raised inside the TLB fill and
    delivered in the same Unicorn run, so the guest runs in a handful of runs, not thousands."""
    from emu.cpu import Cpu
    runs = []
    real_run = Cpu.run
    monkeypatch.setattr(Cpu, "run", lambda cpu, count: runs.append(count) or real_run(cpu, count))
    run = run_guest("nano-pgfault", "native")
    assert "2000 iterations, 2000 page faults" in run.text, run.text + run.result.report()
    assert 0 < len(runs) < 20


@pytest.mark.parametrize("engine", ["native", "trap", "bt"])
def test_a_debugger_write_over_a_live_page_table_is_seen_after_invlpg(engine):
    """A store the VMM makes into a page table (here the debugger's physical write) drops the
    shadow entries derived from it, as a guest store would: the guest's INVLPG then finds the
    new frame under shadow paging (trap, bt) as on the bare machine (native)."""
    from emu.asm import assemble_file
    from hypervisors.images import resolve
    from hypervisors.monolithic import MonolithicHypervisor
    from vmm.debug.debuggee import Debuggee, StopKind
    program = PROGRAMS / "pte_host_edit.asm"
    output: list[bytes] = []
    d = Debuggee(lambda observers: MonolithicHypervisor(engine=engine, sink=output.append,
                                                        observers=observers),
                 resolve(str(program), 32 << 20))
    try:
        d.add_breakpoint(assemble_file(program).symbols["host_edit"])
        assert d.cont().kind is StopKind.BREAKPOINT
        d.write_physical(0x22000, (0x31000 | 3).to_bytes(4, "little"))   # WINDOW -> FRAME_B
        d.delete()
        d.cont()
    finally:
        d.close()
    text = b"".join(output).decode()
    assert "WINDOW reads 0xaaaaaaaa, after the host's PTE edit and INVLPG 0xbbbbbbbb ... ok" in text
