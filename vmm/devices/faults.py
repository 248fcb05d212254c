"""Driver faults on purpose (``--inject-device-fault``): a device model replaced on its bus by one
whose every access raises, to compare what a failing driver takes down under each hypervisor
architecture (the whole monolithic hypervisor, or one child partition under micro)."""
from __future__ import annotations

from vmm.bus import Bus


class DeviceFault(RuntimeError):
    """A device model failed (here: on purpose, through --inject-device-fault)."""


class FaultyDevice:
    """Wraps a device so that its first access raises: a driver bug, injected on purpose."""

    def __init__(self, device):
        self.device = device
        self.name = device.name

    def read(self, offset: int, size: int) -> int:
        raise DeviceFault(f"{self.name}: injected fault on a read at offset {offset}")

    def write(self, offset: int, size: int, value: int) -> None:
        raise DeviceFault(f"{self.name}: injected fault on a write of {value:#x} at offset "
                          f"{offset}")


def device_names(bus: Bus) -> list[str]:
    return [device.name for _base, _length, device in bus.entries()]


def inject_fault(bus: Bus, name: str) -> None:
    """Replace the device called ``name`` on ``bus`` by one whose accesses raise DeviceFault."""
    windows = [(base, length, device) for base, length, device in bus.entries()
               if device.name == name]
    if not windows:
        raise ValueError(f"no device named {name!r} to inject a fault into; devices: "
                         f"{', '.join(device_names(bus))}")
    device = windows[0][2]
    bus.remove(device)
    faulty = FaultyDevice(device)
    for base, length, _device in windows:
        bus.insert(faulty, base, length)
