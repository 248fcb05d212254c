"""Snapshots under the micro hypervisor: a child partition saved at several points (its device
models' state from the parent partition) continues with the output, exits and instruction count
of the monolithic run that was never stopped, under micro and across hypervisors (monolithic <->
micro); the CLI's --save/--restore/--migrate/--incoming under micro in other processes; what
cannot carry over is refused in one line."""
from __future__ import annotations

import pytest
from conftest import trapvisor
from test_migration import incoming

from hypervisors.images import resolve
from hypervisors.micro.hypervisor import MicroHypervisor
from hypervisors.micro.snapshots import PartitionMachine
from hypervisors.monolithic import MonolithicHypervisor
from vmm.devices.pc_testdev import IOMEM_BASE
from vmm.snapshot import format as snapfile
from vmm.snapshot import machine
from vmm.vm import DEFAULT_RAM

SCRATCH = f"mmio:{IOMEM_BASE:#x}"   # pc-testdev's scratch page, on the board of both

FRACTIONS = (0.3, 0.8)


def _machine(kind: str, out: list, engine: str):
    if kind == "monolithic":
        return MonolithicHypervisor(engine=engine, sink=out.append, timeout=60)
    return PartitionMachine(MicroHypervisor(engine=engine, sink=out.append, timeout=60))


def _reference(name: str, engine: str):
    """The uninterrupted monolithic run, counted throughout as a saving run is."""
    out = []
    hypervisor = _machine("monolithic", out, engine)
    try:
        hypervisor.boot(resolve(name, DEFAULT_RAM))
        machine.run_to(hypervisor.vcpu, exit_number=1 << 62)
        return b"".join(out), hypervisor.vcpu.result()
    finally:
        hypervisor.close()


def _saved(kind: str, name: str, engine: str, point: int) -> tuple[bytes, bytes]:
    out = []
    source = _machine(kind, out, engine)
    try:
        source.boot(resolve(name, DEFAULT_RAM))
        assert machine.run_to(source.vcpu, exit_number=point), source.vcpu.result().report()
        return b"".join(out), machine.capture(source).to_bytes()
    finally:
        source.close()


def _continued(kind: str, data: bytes, engine: str):
    out = []
    target = _machine(kind, out, engine)
    try:
        machine.restore(target, [snapfile.parse(data)])
        target.vcpu.control.precise = True
        return b"".join(out), target.vcpu.run(), out
    finally:
        target.close()


@pytest.mark.parametrize("saved, restored", [("micro", "micro"), ("monolithic", "micro"),
                                             ("micro", "monolithic")])
@pytest.mark.parametrize("name, engine", [("interrupts", "trap"), ("paging", "vtx"),
                                          ("usermode", "bt")])
def test_a_child_continues_where_the_uninterrupted_run_is(name, engine, saved, restored):
    output, reference = _reference(name, engine)
    for fraction in FRACTIONS:
        before, data = _saved(saved, name, engine, max(1, int(reference.exits * fraction)))
        _, result, out = _continued(restored, data, engine)
        assert before + b"".join(out) == output
        assert (result.state, result.status, result.exits, result.instructions) == (
            reference.state, reference.status, reference.exits, reference.instructions)


def test_cli_saves_under_micro_and_restores_under_either(tmp_path):
    plain = trapvisor("run", "interrupts", "--hypervisor", "micro")
    path = tmp_path / "vm.snap"
    save = trapvisor("run", "interrupts", "--hypervisor", "micro", "--save", str(path),
                     "--at-exit", "100,500")
    assert save.returncode == 0, save.stderr
    assert snapfile.read(path).get("meta")["hypervisor"] == "micro"
    for file, where in ((path, ()), (f"{path}.1", ()), (f"{path}.1", ("--hypervisor",
                                                                      "monolithic"))):
        resumed = trapvisor("run", "--restore", str(file), *where)
        assert resumed.returncode == plain.returncode == 0, resumed.stderr
        assert resumed.stdout and plain.stdout.endswith(resumed.stdout)
    monolithic = tmp_path / "mono.snap"
    assert trapvisor("run", "interrupts", "--save", str(monolithic),
                     "--at-exit", "300").returncode == 0
    resumed = trapvisor("run", "--restore", str(monolithic), "--hypervisor", "micro")
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout and plain.stdout.endswith(resumed.stdout)


@pytest.mark.parametrize("target", [("--hypervisor", "micro"), ()])
def test_a_micro_child_migrates_to_either_hypervisor(target):
    plain = trapvisor("run", "interrupts")
    process, where = incoming(*target)
    source = trapvisor("run", "interrupts", "--hypervisor", "micro", "--migrate", where,
                       "--at-exit", "300")
    out, err = process.communicate(timeout=120)
    assert source.returncode == 0, source.stderr
    assert "pre-copy rounds" in source.stderr
    assert process.returncode == 0, err.decode()
    assert source.stdout + out.decode() == plain.stdout


def test_an_enlightened_child_is_refused_in_one_line(tmp_path):
    refused = trapvisor("run", "vmbus-console", "--hypervisor", "micro", "--save",
                        str(tmp_path / "vm.snap"), "--at-exit", "150")
    assert refused.returncode == 2, refused.stderr
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "enabled the SynIC or hypercalls" in lines[0], lines


def test_a_written_scratch_page_carries_over_to_the_parent_partition():
    """pc-testdev's MMIO scratch page runs in the parent under micro: what a monolithic guest
    wrote there is in the parent's page after the restore (and in its next snapshot)."""
    hypervisor = MonolithicHypervisor(engine="trap")
    try:
        hypervisor.boot(resolve("hello", DEFAULT_RAM))
        machine.run_to(hypervisor.vcpu, exit_number=5)
        scratch = machine.devices_of(hypervisor.vm)[SCRATCH]
        scratch.buffer[0x123] = 0xA5
        data = machine.capture(hypervisor).to_bytes()
    finally:
        hypervisor.close()
    target = PartitionMachine(MicroHypervisor(engine="trap"))
    try:
        machine.restore(target, [snapfile.parse(data)])
        state = target.save_devices()
        assert state["devices"][SCRATCH]["buffer"]["~bytearray"][0x123] == 0xA5
    finally:
        target.close()
