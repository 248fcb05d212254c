"""MMIO under every engine: a device window above RAM (tests/programs/mmio.asm stores bytes, words
and dwords to it and loads them back). Natively the access reaches the device directly; under a
VMM every access is an EPT_VIOLATION exit (qualification: read 0x101, write 0x102, SDM Table
28-7) whose handler carries it out against the MMIO bus. With no device there, the run ends with
a report (under vtx, an EPT violation with nothing behind it)."""
from __future__ import annotations

from conftest import PROGRAMS
from hypervisors.images import resolve
from hypervisors.monolithic import MonolithicHypervisor
from vmm.observers import ExitCallback
from vmm.run_state import RunState
from vmm.vmcs import ExitReason

WINDOW = 0xFEB00000


class Recorder:
    """An MMIO device that remembers stores and answers loads with its offset."""
    name = "recorder"

    def __init__(self):
        self.stores = []

    def read(self, offset: int, size: int) -> int:
        return 0x11223344 + offset

    def write(self, offset: int, size: int, value: int) -> None:
        self.stores.append((offset, size, value))


def run_mmio(engine: str, device):
    exits, chunks = [], []
    hypervisor = MonolithicHypervisor(engine=engine, sink=chunks.append, timeout=30,
                                      observers=[ExitCallback(lambda e, o: exits.append(e))])
    if device is not None:
        hypervisor.vm.mmio.insert(device, WINDOW, 0x1000)
    try:
        result = hypervisor.run(resolve(str(PROGRAMS / "mmio.asm"), hypervisor.vm.memory.size))
    finally:
        hypervisor.close()
    return result, [e for e in exits if e.reason is ExitReason.EPT_VIOLATION], b"".join(chunks)


def test_every_engine_reaches_the_device(engine):
    device = Recorder()
    result, violations, output = run_mmio(engine, device)
    assert result.ok, result.report()
    assert device.stores == [(0, 1, 0x41), (2, 2, 0x4342), (4, 4, 0x44434241)]
    assert output == b"0x450x1122334c\n"
    if engine == "native":
        assert violations == []
        return
    assert [e.guest_physical for e in violations] == [WINDOW, WINDOW + 2, WINDOW + 4, WINDOW + 1,
                                                      WINDOW + 8]
    assert [e.qualification for e in violations] == [0x102, 0x102, 0x102, 0x101, 0x101]
    assert [e.size for e in violations] == [1, 2, 4, 1, 4]


def test_no_device_ends_the_run_with_a_report(engine):
    result, violations, _ = run_mmio(engine, None)
    assert result.state is RunState.GUEST_FAULT
    if engine == "vtx":
        assert "EPT violation at guest-physical 0xfeb00000" in result.message
        assert violations[0].qualification == 0x102
    else:
        assert "guest write of 1 bytes at guest-physical 0xfeb00000, outside RAM" in result.message
