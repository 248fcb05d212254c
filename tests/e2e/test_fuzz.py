"""The differential fuzzer (`trapvisor fuzz`, fuzz/): its reproducers as regression tests, a
bounded campaign with fixed seeds, and the case generator's own properties.

Each tests/fuzz/*.asm is a minimised reproducer with its expected divergences in its header
(`; known: ENGINE NAME`, `; trap-fidelity: trap`). When a fix lands, its reproducer stops
diverging and its test fails: delete the entry from fuzz/known.py and the reproducer's `known:`
lines, and keep the reproducer as a regression test: with no `known:` line, bt and vtx must
agree with native, and trap too unless its header says `trap-fidelity: trap`."""
from __future__ import annotations

import re
import struct
import time
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from conftest import ROOT, trapvisor
from fuzz import parent as parent_fuzz
from fuzz.campaign import ENGINES, campaign, run_case
from fuzz.cli import load
from fuzz.known import KNOWN
from fuzz.parent_ide import IMAGE_SECTORS, DiskFixture
from fuzz.pool import Bounds, Pool
from fuzz.program import BOOT_ADDRESS, StructuredCase, linker, record_log
from fuzz.records import EVENT, parse
from vmm.devices.ide import SECTOR

REPRODUCERS = sorted((ROOT / "tests" / "fuzz").glob("*.asm"))
CI_SEEDS = range(0, 120)          # the bounded campaign: fixed seeds, 30 ops each


@pytest.fixture(scope="module")
def pool():
    with Pool() as workers:
        yield workers


def header(path: Path, key: str) -> set[str]:
    return set(re.findall(rf"^; {key}: (.+)$", path.read_text(), re.MULTILINE))


@pytest.mark.parametrize("path", REPRODUCERS, ids=lambda p: p.stem)
def test_reproducer_shows_exactly_its_expected_divergences(pool, path):
    result = run_case(pool, load(path), Bounds())
    shown = {f"{d.engine} {d.known.name}" for d in result.divergences if d.known}
    new = [d.describe() for d in result.divergences if d.failure]
    assert not new, "new divergences:\n" + "\n".join(new)
    fixed = header(path, "known") - shown
    assert not fixed, (f"no longer diverges: {sorted(fixed)}; if this is a fix, remove the entry "
                       f"from fuzz/known.py and its `known:` line in {path.name}")
    assert shown == header(path, "known")
    assert {d.engine for d in result.divergences if d.expected} == header(path, "trap-fidelity")


def events_of(pool, engine: str, image: bytes) -> list:
    return [r for r in parse(pool.run(engine, image, Bounds()).output) if r.tag == EVENT]


def test_int6_is_a_software_interrupt_under_every_engine(pool):
    """INT 6 at ring 0 pushes the address past it (CD 06 just before); at ring 3 through the
    runtime's DPL-0 gate it is #GP((6 << 3) | 2) at the INT, not #UD."""
    case = load(ROOT / "tests" / "fuzz" / "int6-as-invalid-opcode.asm")
    image = case.image()
    for engine in ENGINES:
        events = events_of(pool, engine, image)
        assert [(r.op, r.raw[2]) for r in events] == [(0, 6), (1, 13)], engine
        pushed = int.from_bytes(events[0].raw[3:7], "little") - BOOT_ADDRESS
        assert image[pushed - 2:pushed] == b"\xcd\x06", engine
        error_code, eip = struct.unpack_from("<II", events[1].raw, 3)
        assert (error_code, image[eip - BOOT_ADDRESS:][:2]) == (0x32, b"\xcd\x06"), engine


def test_a_software_event_whose_delivery_faults_is_reported_at_its_instruction(pool):
    """#NP for INT 0x44 (gate not present), #GP for INT 0x30, INT3 and INTO from ring 3 (DPL-0
    gates): each frame's EIP is the instruction's own address, under every engine."""
    image = load(ROOT / "tests" / "fuzz" / "software-event-faults.asm").image()
    expected = [(0, 11, 0x44 << 3 | 2, b"\xcd\x44"), (1, 13, 0x30 << 3 | 2, b"\xcd\x30"),
                (2, 13, 3 << 3 | 2, b"\xcc"), (3, 13, 4 << 3 | 2, b"\xce")]
    for engine in ENGINES:
        seen = []
        for record in events_of(pool, engine, image):
            error_code, eip = struct.unpack_from("<II", record.raw, 3)
            at = image[eip - BOOT_ADDRESS:eip - BOOT_ADDRESS + 2]
            seen.append((record.op, record.raw[2], error_code, at[:1] if at[0] != 0xCD else at))
        assert seen == expected, engine


def test_every_known_divergence_has_a_reproducer():
    named = {line.split()[-1] for path in REPRODUCERS for line in header(path, "known")}
    assert {entry.name for entry in KNOWN} <= named


def test_bounded_campaign_finds_nothing_new():
    started = time.perf_counter()
    tally = campaign("structured", CI_SEEDS, 30, Bounds(), jobs=2)
    print(f"\n{tally.report()}\n(the test took {time.perf_counter() - started:.1f} s)")
    new = [d.describe() for result in tally.failures for d in result.divergences if d.failure]
    assert not new, ("new divergences (reproduce with `trapvisor fuzz --cases 1 --seed SEED`):\n"
                     + "\n".join(f"seed {r.case.seed}: {d.describe()}" for r in tally.failures
                                 for d in r.divergences if d.failure))
    assert sum(tally.outcomes["native"].values()) == len(CI_SEEDS)


def test_random_bytes_run_under_every_engine_without_vmm_failure():
    tally = campaign("bytes", range(3), 64, Bounds(timeout=2, max_instructions=5_000), jobs=2)
    assert not tally.failures, tally.report()


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 12))
def test_a_case_is_its_seed_and_its_source_gives_back_its_ops(seed, length):
    case = StructuredCase.generate(seed, length)
    assert case == StructuredCase.generate(seed, length)
    assert StructuredCase.from_source(case.source("runtime.asm"), seed) == case
    assert len(case.op_addresses()) == length and case.image()


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(0, 40))
def test_a_linked_body_is_the_bytes_the_assembler_makes_of_the_whole_program(seed, length):
    """fuzz/link.py's units, linked, give the image and op addresses of one assembly."""
    case = StructuredCase.generate(seed, length)
    body, starts = linker().link([tuple(op.lines()) for op in case.ops])
    assert (body, starts) == case.assemble_body()


@pytest.mark.parametrize("seed", [8000000, 8000003, 9100004])
def test_a_logged_run_shows_what_the_console_shows(pool, seed):
    """Records logged to RAM (the campaigns' mode) are the bytes the 0xE9 console gets, under
    every engine, however the run ends (these seeds exit, triple-fault and halt)."""
    case = StructuredCase.generate(seed, 30)
    for engine in ENGINES:
        console = pool.run(engine, case.image(), Bounds())
        logged = pool.run(engine, case.logged_image(), Bounds(), record_log())
        assert console.output and logged.output == console.output, engine
        assert logged.verdict == console.verdict, engine


def test_the_command_replays_a_reproducer():
    done = trapvisor("fuzz", "--replay",
                     str(ROOT / "tests" / "fuzz" / "hypervisor-cpuid-leaves.asm"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "known: hypervisor-cpuid-leaves" in done.stdout


def test_hostile_intercepts_never_take_the_parent_partition_down():
    """Item 4: random and malformed intercept records against a real parent process."""
    tally = parent_fuzz.run(cases=150, seed=0)
    assert not tally.failures, tally.report() + "\n" + "\n".join(tally.failures)
    assert tally.answers["reply"] > tally.cases          # most records were served
    assert any(answer.startswith("malformed") for answer in tally.answers)


def test_hostile_ata_programs_stay_inside_the_disk_image(tmp_path):
    """Item 4 with the IDE channel in scope: sector counts, LBAs and REP transfers past a small
    image leave its neighbours, its size and its partial last sector alone, the parent up."""
    disk = DiskFixture(tmp_path)
    tally = parent_fuzz.run_with_disk(80, 0, disk)
    assert not tally.failures, tally.report() + "\n" + "\n".join(tally.failures)
    assert tally.ide_programs >= 25 and tally.ide_records > 100 * tally.ide_programs
    sectors = disk.image.read_bytes()[:IMAGE_SECTORS * SECTOR]
    assert sectors != bytes(len(sectors))          # some hostile writes did land, inside it


@pytest.mark.parametrize("victim", ["before.img", "after.img", "disk.img"])
def test_the_disk_check_sees_a_byte_written_outside_the_image(tmp_path, victim):
    disk = DiskFixture(tmp_path)
    assert disk.damage() == ""
    with open(tmp_path / victim, "r+b") as file:
        file.seek(0, 2)
        file.seek(file.tell() - 1)
        file.write(b"\0")
    assert disk.damage()

