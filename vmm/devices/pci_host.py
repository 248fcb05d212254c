"""PCI configuration mechanism #1 (PCI Local Bus Specification 3.0, 3.2.2.3.2) at ports
0xCF8-0xCFF, on a host bridge with nothing behind it: every configuration read answers "no
device" (all ones), as a master abort does.
"""
from __future__ import annotations

from vmm.bus import all_ones
from vmm.snapshot.state import PlainState

CONFIG_ADDRESS, CONFIG_DATA = 0, 4     # offsets in a window based at 0xCF8
CONFIG_ENABLE = 1 << 31


def config_fields(address: int) -> tuple[bool, int, int, int, int]:
    """(enable, bus, device, function, register) of a CONFIG_ADDRESS value."""
    return (bool(address & CONFIG_ENABLE), address >> 16 & 0xFF, address >> 11 & 0x1F,
            address >> 8 & 7, address & 0xFC)


class PciHostNoDevices(PlainState):
    """An 8-port window at 0xCF8. CONFIG_ADDRESS is a dword register: a 32-bit access at
    0xCF8 reads back exactly what was written (as QEMU's host bridge does; Linux's type-1 probe
    writes 0x80000000 and expects it back). Narrower accesses to 0xCF8-0xCFB are not this
    register (mechanism #2 and ISA use those bytes): they read all ones and are dropped.
    CONFIG_DATA (0xCFC-0xCFF, any width) reads all ones; writes are dropped. ``accesses``
    records the (bus, device, function, register) of each data access, for tracing."""
    STATE = ("address", "accesses")

    name = "pci-host"

    def __init__(self) -> None:
        self.address = 0
        self.accesses: list[tuple[int, int, int, int]] = []

    def read(self, offset: int, size: int) -> int:
        if offset == CONFIG_ADDRESS and size == 4:
            return self.address
        if offset >= CONFIG_DATA:
            self._note(offset)
        return all_ones(size)

    def write(self, offset: int, size: int, value: int) -> None:
        if offset == CONFIG_ADDRESS and size == 4:
            self.address = value & 0xFFFFFFFF
        elif offset >= CONFIG_DATA:
            self._note(offset)

    def _note(self, offset: int) -> None:
        enabled, bus, device, function, register = config_fields(self.address)
        if enabled:
            self.accesses.append((bus, device, function, register + (offset - CONFIG_DATA)))
