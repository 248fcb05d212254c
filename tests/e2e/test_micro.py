"""The micro hypervisor end to end: several child partitions side by side, a parent partition
that crashes, a driver that faults, hypercalls from a malicious child, and the TCB report."""
from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from conftest import EXPECTED, trapvisor
from hypervisors.images import resolve
from hypervisors.micro import tcb
from hypervisors.micro.hypervisor import MicroHypervisor
from vmm.vcpu import RunState

SPIN_IO = """bits 16
org 0x7c00
    cli
spin:
    in al, 0x80
    jmp spin
"""
# A child that hands the hypervisor hostile hypercall inputs and exits with the HV_STATUS.
HYPERCALL = """bits 16
org 0x7c00
    cli
    mov eax, 0x5C          ; HvCallPostMessage, slow
    xor edx, edx
    xor ebx, ebx
    mov ecx, {gpa}         ; input GPA (EBX:ECX)
    vmcall
    out 0xF4, al           ; the status is the exit status
"""
# A device model that faults on purpose: the exit status and the report each hypervisor gives.
DRIVER_FAULT_REPORTS = {
    "micro": (3, "device-error: a device model failed in the parent partition"),
    "monolithic": (4, "vmm-error: DeviceFault"),
}


@pytest.fixture
def micro():
    chunks: dict[str, list[bytes]] = {}
    hypervisor = MicroHypervisor(engine="trap", timeout=60)
    hypervisor.chunks = chunks
    yield hypervisor
    hypervisor.close()


def partition(hypervisor, name, **options):
    chunks = hypervisor.chunks.setdefault(name, [])
    return hypervisor.create_partition(name, chunks.append, **options)


def image(source: str, tmp_path: Path, name: str = "guest"):
    path = tmp_path / f"{name}.asm"
    path.write_text(source)
    return resolve(str(path), 32 << 20)


def test_two_children_run_side_by_side_with_their_own_output(micro):
    guests = [(partition(micro, name), resolve(name, 32 << 20)) for name in ("hello", "pmode")]
    results = micro.run_all(guests)
    assert [r.state for r in results] == [RunState.EXITED, RunState.EXITED]
    for name in ("hello", "pmode"):
        assert b"".join(micro.chunks[name]).decode() == (EXPECTED / f"{name}.txt").read_text()


def test_a_dying_vcpu_thread_ends_only_its_vm_with_a_report(micro):
    doomed, healthy = partition(micro, "doomed"), partition(micro, "pmode")

    def die() -> None:
        raise RuntimeError("the vCPU thread's loop failed")
    doomed.vcpu._run_slice = die
    results = micro.run_all([(doomed, resolve("hello", 32 << 20)),
                             (healthy, resolve("pmode", 32 << 20))])
    assert results[0].state is RunState.VMM_ERROR
    assert "RuntimeError: the vCPU thread's loop failed" in results[0].message
    assert "doomed" in results[0].report()
    assert results[1].state is RunState.EXITED and results[1].status == 0
    assert b"".join(micro.chunks["pmode"]).decode() == (EXPECTED / "pmode.txt").read_text()


def test_the_cli_prefixes_each_vms_lines():
    run = trapvisor("run", "hello", "pmode", "--hypervisor", "micro")
    assert run.returncode == 0, run.stderr
    assert "[1:hello] Hello from a trapvisor guest!\n" in run.stdout
    assert "[2:pmode] all checks passed\n" in run.stdout


def test_a_parent_crash_stops_every_child_with_a_report_and_a_restart_serves_new_vms(
        micro, tmp_path):
    children = [(partition(micro, f"spin{n}"), image(SPIN_IO, tmp_path)) for n in (1, 2)]
    results = []
    runner = threading.Thread(target=lambda: results.extend(micro.run_all(children)))
    runner.start()
    time.sleep(0.5)
    os.kill(micro.parent.pid, signal.SIGKILL)
    runner.join(timeout=20)
    assert not runner.is_alive(), "a child hung after its parent partition died"
    assert [r.state for r in results] == [RunState.DEVICE_ERROR] * 2
    assert "parent partition stopped answering" in results[0].message
    report = micro.parent_report()
    assert "killed by SIGKILL" in report and "1 (spin1), 2 (spin2)" in report
    micro.restart_parent()
    assert micro.parent_report() is None
    again = partition(micro, "hello")
    assert again.run(resolve("hello", 32 << 20)).state is RunState.EXITED


def test_a_driver_fault_stops_only_its_vm_and_the_parent_carries_on(micro):
    guests = [(partition(micro, "hello", inject_fault="uart16550"), resolve("hello", 32 << 20)),
              (partition(micro, "pmode"), resolve("pmode", 32 << 20))]
    faulted, healthy = micro.run_all(guests)
    assert faulted.state is RunState.DEVICE_ERROR
    assert "uart16550 (port 0x3f9): DeviceFault" in faulted.message
    assert healthy.state is RunState.EXITED and healthy.status == 0
    assert micro.parent.alive()
    assert partition(micro, "after").run(resolve("hello", 32 << 20)).ok


def test_the_cli_reports_a_driver_fault_without_a_traceback(hypervisor):
    status, says = DRIVER_FAULT_REPORTS[hypervisor]
    run = trapvisor("run", "hello", "--hypervisor", hypervisor, "--inject-device-fault",
                    "uart16550")
    assert run.returncode == status and says in run.stderr
    assert "Traceback" not in run.stderr


def test_an_unknown_fault_device_is_bad_input():
    run = trapvisor("run", "hello", "--hypervisor", "micro", "--inject-device-fault", "nope")
    assert run.returncode == 2 and "no device named 'nope'" in run.stderr


@pytest.mark.parametrize("gpa, status", [("0x7FFFF000", 5), ("0x9004", 4), ("0x9F08", 4)])
def test_hostile_hypercall_gpas_are_refused_and_counted(micro, tmp_path, gpa, status):
    child = partition(micro, "hostile")
    result = child.run(image(HYPERCALL.format(gpa=gpa), tmp_path))
    assert (result.state, result.status) == (RunState.EXITED, status)
    assert sum(child.hypercalls.rejections.values()) == 1


def test_under_monolithic_the_same_hypercall_is_an_unknown_code(tmp_path):
    path = tmp_path / "hostile.asm"
    path.write_text(HYPERCALL.format(gpa="0x9000"))
    run = trapvisor("run", str(path))
    assert run.returncode == 2


def test_tcb_puts_every_device_model_in_the_parent_and_only_the_apics_in_the_micro_hypervisor():
    """The local APIC is per vCPU and the IOAPIC feeds it: both are the hypervisor's (as Hyper-V
    virtualizes the APIC); every other device model runs in the parent partition."""
    run = trapvisor("tcb")
    assert run.returncode == 0, run.stderr
    rows = [line.split() for line in run.stdout.splitlines()[1:]]
    packages = {(row[0], " ".join(row[1:-3])) for row in rows}
    assert ("monolithic", "hypervisor vmm.devices") in packages
    assert ("micro", "parent partition vmm.devices") in packages
    assert not any(row[0] == "micro" and row[1] == "parent" and row[3] == "emu" for row in rows)
    micro = tcb.measure("micro")
    assert {name for name in micro["hypervisor"] if name.startswith("vmm.devices.")} == {
        "vmm.devices.lapic", "vmm.devices.apic_timer", "vmm.devices.ioapic"}
    assert {"vmm.devices.uart16550", "vmm.devices.pic8259", "vmm.devices.pit8254",
            "vmm.devices.ide"} <= set(micro["parent partition"])
