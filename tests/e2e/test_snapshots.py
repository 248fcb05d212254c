"""Snapshots end to end: every shipped guest under every engine (monolithic), saved at several
points and restored into a fresh VM, continues with the output, exits and instruction count of
the run that was never stopped; the CLI's --save/--restore in separate processes, diff chains,
engine switches that carry over and the ones refused, and damaged files."""
from __future__ import annotations

import pytest
from conftest import trapvisor

import guests
from hypervisors.images import resolve
from hypervisors.monolithic import MonolithicHypervisor
from vmm.snapshot import format as snapfile
from vmm.snapshot import machine, ram
from vmm.vcpu import RunState
from vmm.vm import DEFAULT_RAM

NAMES = [name for name in guests.names() if not name.startswith("vmbus")]  # micro-only guests
FRACTIONS = (0.25, 0.5, 0.9)


def _precise_run(name, engine):
    """The uninterrupted reference, counted throughout as the saving run is."""
    out = []
    hypervisor = MonolithicHypervisor(engine=engine, sink=out.append, timeout=60)
    try:
        hypervisor.boot(resolve(name, DEFAULT_RAM))
        machine.run_to(hypervisor.vcpu, exit_number=1 << 62)
        return b"".join(out), hypervisor.vcpu.result()
    finally:
        hypervisor.close()


def _saved_at(name, engine, exits, steps):
    """One run, paused at each point: (output so far, snapshot file bytes) per point."""
    out, saved = [], []
    hypervisor = MonolithicHypervisor(engine=engine, sink=out.append, timeout=60)
    try:
        hypervisor.boot(resolve(name, DEFAULT_RAM))
        for point in exits or steps:
            vcpu = hypervisor.vcpu
            alive = (machine.run_to(vcpu, exit_number=point) if exits
                     else machine.run_to(vcpu, instructions=point - vcpu.instructions))
            assert alive, vcpu.result().report()
            saved.append((b"".join(out), machine.capture(hypervisor).to_bytes()))
    finally:
        hypervisor.close()
    return saved


def _continue(data: bytes, engine: str):
    out = []
    hypervisor = MonolithicHypervisor(engine=engine, sink=out.append, timeout=60)
    try:
        machine.restore(hypervisor, [snapfile.parse(data)])
        hypervisor.vcpu.control.precise = True
        result = hypervisor.vcpu.run()
    finally:
        hypervisor.close()
    return b"".join(out), result


@pytest.mark.parametrize("name", NAMES)
def test_restored_run_continues_where_the_uninterrupted_one_is(name, engine):
    output, reference = _precise_run(name, engine)
    assert not reference.uncounted
    exits = sorted({max(1, int(reference.exits * f)) for f in FRACTIONS}) if reference.exits else None
    steps = None if exits else sorted({int(reference.instructions * f) for f in FRACTIONS})
    for before, data in _saved_at(name, engine, exits, steps):
        after, result = _continue(data, engine)
        assert before + after == output
        assert (result.state, result.status, result.exits, result.instructions) == (
            reference.state, reference.status, reference.exits, reference.instructions)


@pytest.mark.parametrize("saved, restored", [("trap", "bt"), ("bt", "trap"), ("native", "vtx"),
                                             ("vtx", "native")])
def test_state_carries_over_between_engines_of_a_family(saved, restored):
    for name in ("interrupts", "paging", "usermode"):
        output, _ = _precise_run(name, saved)
        point = {"exits": [40]} if saved != "native" else {"steps": [20_000]}
        (before, data), = _saved_at(name, saved, point.get("exits"), point.get("steps"))
        after, result = _continue(data, restored)
        assert result.state is RunState.EXITED and result.status == 0, result.report()
        assert before + after == output


def test_cli_saves_and_restores_in_other_processes_with_a_diff_chain(tmp_path):
    plain = trapvisor("run", "interrupts", "--engine", "bt")
    path = tmp_path / "vm.snap"
    save = trapvisor("run", "interrupts", "--engine", "bt", "--save", str(path),
                     "--at-exit", "50,400")
    assert save.returncode == 0, save.stderr
    assert "saved full snapshot at exit 50" in save.stderr
    assert "saved diff snapshot at exit 400" in save.stderr
    diff = snapfile.read(f"{path}.1")
    assert diff.kind == snapfile.DIFF and diff.base == snapfile.read(path).ident
    for file, engine in ((path, "bt"), (f"{path}.1", "bt"), (f"{path}.1", "trap")):
        resumed = trapvisor("run", "--restore", str(file), "--engine", engine)
        assert resumed.returncode == plain.returncode == 0, resumed.stderr
        assert plain.stdout.endswith(resumed.stdout) and resumed.stdout


def test_native_snapshot_by_instruction_count(tmp_path):
    plain = trapvisor("run", "pmode", "--engine", "native")
    path = tmp_path / "vm.snap"
    save = trapvisor("run", "pmode", "--engine", "native", "--save", str(path),
                     "--at-instruction", "3000")
    assert save.returncode == 0, save.stderr
    resumed = trapvisor("run", "--restore", str(path), "--engine", "vtx")
    assert resumed.returncode == 0, resumed.stderr
    assert save.stdout + resumed.stdout == plain.stdout


def test_vtx_controls_and_read_shadows_carry_over(tmp_path):
    options = ("--engine", "vtx", "--exit-on", "cr3,invlpg,dt,cr0=0x80000000")
    plain = trapvisor("run", "paging", *options)
    path = tmp_path / "vm.snap"
    save = trapvisor("run", "paging", *options, "--save", str(path), "--at-exit", "20")
    assert save.returncode == 0, save.stderr
    resumed = trapvisor("run", "--restore", str(path), "--stats")
    assert resumed.returncode == plain.returncode == 0, resumed.stderr
    assert save.stdout + resumed.stdout == plain.stdout
    assert "CR_ACCESS" in resumed.stderr


def test_restore_refuses_an_engine_of_the_other_family(tmp_path):
    path = tmp_path / "vm.snap"
    assert trapvisor("run", "hello", "--save", str(path), "--at-exit", "5").returncode == 0
    refused = trapvisor("run", "--restore", str(path), "--engine", "native")
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == [
        "trapvisor: a snapshot taken under trap cannot continue under native: trap keeps the "
        "guest kernel deprivileged, native at real CPL 0 (native <-> vtx and trap <-> bt carry "
        "over)"]


@pytest.mark.parametrize("damage, words", [
    (lambda data: data[:len(data) // 2], "is truncated"),
    (lambda data: data[:100] + bytes([data[100] ^ 0xFF]) + data[101:], "fails its CRC-32 check"),
    (lambda data: data[:8] + b"\x07\x00" + data[10:], "is snapshot format version 7"),
    (lambda data: b"garbage" + data, "is not a trapvisor snapshot")])
def test_a_damaged_file_is_one_line_and_status_2(tmp_path, damage, words):
    path = tmp_path / "vm.snap"
    assert trapvisor("run", "hello", "--save", str(path), "--at-exit", "5").returncode == 0
    path.write_bytes(damage(path.read_bytes()))
    refused = trapvisor("run", "--restore", str(path))
    assert refused.returncode == 2
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0] and "Traceback" not in refused.stderr


def test_a_point_the_guest_never_reaches_writes_nothing(tmp_path):
    path = tmp_path / "vm.snap"
    late = trapvisor("run", "hello", "--save", str(path), "--at-exit", "100000")
    assert late.returncode == 3
    assert "before the snapshot point" in late.stderr and not path.exists()


def test_bad_points_are_refused_in_one_line(tmp_path):
    path = str(tmp_path / "vm.snap")
    for args, words in ((["--hypervisor", "micro", "--at-exit", "5", "--inject-device-fault",
                          "uart16550"], "not carried by snapshots"),
                        (["--at-exit", "5,3"], "positive and increasing"),
                        ([], "needs one of --at-exit N or --at-instruction N")):
        refused = trapvisor("run", "hello", "--save", path, *args)
        assert refused.returncode == 2 and words in refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1
    refused = trapvisor("run", "--restore", path, "--input", "x", "--wall-clock")
    assert refused.returncode == 2
    assert refused.stderr == ("trapvisor: --input, --wall-clock cannot be given with --restore: "
                              "the snapshot holds the run's RAM, disks, input and clock\n")


def test_diff_holds_only_the_pages_written_since():
    hypervisor = MonolithicHypervisor(engine="trap")
    try:
        hypervisor.boot(resolve("paging", DEFAULT_RAM))
        machine.run_to(hypervisor.vcpu, exit_number=10)
        base = machine.capture(hypervisor)
        hashes = ram.PageHashes(hypervisor.vm.memory)
        hypervisor.vm.memory.write(0x300000, b"written")
        diff = machine.capture(hypervisor, base, hashes)
    finally:
        hypervisor.close()
    assert diff.raw("ram")[:8] == (1).to_bytes(4, "little") + (0x300).to_bytes(4, "little")
