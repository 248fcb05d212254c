"""The local APIC's page under every engine and both hypervisors (tests/programs/apic.asm: reads,
writes, and IA32_APIC_BASE moving the page and back), and how each engine intercepts it: under
vtx with APIC virtualization (SDM ch. 29) reads of the registers 29.4.2 lists take no exit, the
others are APIC_ACCESS exits (44, qualification: offset, access type), writes APIC_WRITE exits
(56, qualification: offset); with --apicv off every access is an EPT_VIOLATION; trap and bt
answer the same reads inside the intercept, without an exit record."""
from __future__ import annotations

import re

from conftest import PROGRAMS, run_guest, trapvisor

from vmm.engines.apic_access import READS, ApicAccess, access_qualification
from vmm.exit_decoding import qualification
from vmm.observers import ExitCallback
from vmm.vmcs import ExitReason, VmExit

APIC, MOVED = 0xFEE00000, 0xFED00000
PASSED = "all checks passed\n"
# The guest's APIC accesses, in order: (address, write); the register page's reads of ID,
# version and TPR are the virtualized ones.
WRITES = [APIC + 0x80, APIC + 0x320, APIC + 0x380]
UNVIRTUALIZED_READS = [APIC + 0xA0, APIC + 0x390]


def apic_run(engine: str, hypervisor: str = "monolithic", **options):
    exits = []
    run = run_guest(PROGRAMS / "apic.asm", engine, hypervisor,
                    observers=[ExitCallback(lambda exit, outcome: exits.append(exit))], **options)
    assert run.result.ok, run.result.report()
    assert run.text.endswith(PASSED), run.text
    page = [e for e in exits if e.guest_physical is not None
            and e.guest_physical & ~0xFFF in (APIC, MOVED)]
    return run, page


def test_the_apic_page_works_and_moves(engine, hypervisor):
    apic_run(engine, hypervisor)


def test_vtx_virtualizes_apic_reads_and_exits_on_the_rest():
    _, page = apic_run("vtx")
    accesses = [e for e in page if e.reason is ExitReason.APIC_ACCESS]
    writes = [e for e in page if e.reason is ExitReason.APIC_WRITE]
    assert [e.guest_physical for e in accesses] == UNVIRTUALIZED_READS
    assert [e.qualification for e in accesses] == [0xA0, 0x390]      # access type 0: read
    assert [e.guest_physical for e in writes] == WRITES + [MOVED + 0x80]
    assert [e.qualification for e in writes] == [0x80, 0x320, 0x380, 0x80]
    assert len(page) == len(accesses) + len(writes)


def test_vtx_apicv_off_makes_every_apic_access_an_ept_violation():
    _, page = apic_run("vtx", apicv=False)
    assert {e.reason for e in page} == {ExitReason.EPT_VIOLATION}
    assert len(page) == 11          # 7 reads (one at the moved page), 4 writes (one there)


def test_a_data_write_apic_virtualization_does_not_cover_is_an_apic_access_exit():
    """A write to the read-only current count (0x390) is not in SDM 29.4.3.2's list."""
    taken = []

    class Lapic:
        base = APIC

    access = ApicAccess(Lapic(), taken.append, lambda: 0, hardware=True, access_exits=True,
                        register_virtualization=True)
    access.write(APIC + 0x390, 4, 1, None)
    access.write(APIC + 0x82, 2, 1, None)
    assert [(e.reason, e.qualification) for e in taken] == [
        (ExitReason.APIC_ACCESS, access_qualification(0x390, True)),
        (ExitReason.APIC_ACCESS, 0x1082)]


def test_software_engines_serve_the_reads_inside_the_intercept(engine):
    if engine in ("native", "vtx"):
        return
    _, page = apic_run(engine)
    assert [e.reason for e in page] == [ExitReason.EPT_VIOLATION] * 6   # 4 writes, 2 reads
    reads = [e.guest_physical for e in page if not e.qualification & 2]
    assert reads == UNVIRTUALIZED_READS


def test_info_vmcs_shows_the_apic_controls_and_the_access_in_words():
    guest = str(PROGRAMS / "apic.asm")
    on = trapvisor("debug", guest, "--batch", "--engine", "vtx", "--ex", "break exit APIC_ACCESS",
                   "--ex", "continue", "--ex", "info vmcs")
    off = trapvisor("debug", guest, "--batch", "--engine", "vtx", "--apicv", "off",
                    "--ex", "info vmcs")
    assert on.returncode == 0 and off.returncode == 0, on.stderr + off.stderr
    assert re.search(r"virtualize_apic_accesses\s+True", on.stdout)
    assert re.search(r"apic_register_virtualization\s+True", on.stdout)
    assert re.search(r"exit reason\s+APIC_ACCESS \(44\)", on.stdout)
    assert re.search(r"qualification\s+0xa0\b", on.stdout)          # PPR, a data read
    assert re.search(r"virtualize_apic_accesses\s+False", off.stdout)
    assert qualification(_exit(ExitReason.APIC_ACCESS, 0x1390)) == \
        "APIC page offset 0x390, linear data write"
    assert qualification(_exit(ExitReason.APIC_WRITE, 0x80)) == "APIC register 0x080 written"


def _exit(reason: ExitReason, qualification_: int) -> VmExit:
    return VmExit(reason, 0, qualification_)


def test_only_reads_within_one_listed_register_are_virtualized():
    """SDM 29.4.2: entirely within bytes 0-3 of a listed register; PPR and current count are
    not listed."""
    assert {(0x20, 4), (0x23, 1), (0x22, 2), (0x390 - 0x10, 4)} <= READS
    assert not {(0x23, 2), (0x24, 4), (0x21, 4), (0xA0, 4), (0x390, 4), (0x90, 1)} & READS
