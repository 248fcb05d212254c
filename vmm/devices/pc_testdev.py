"""QEMU's ``pc-testdev`` (hw/misc/pc-testdev.c), the ISA test device the kvm-unit-tests use: a
read-back register at ports 0xE0 (and byte-wise at 0xE8), a flush-page port at 0xE4, 24 IRQ
line ports at 0x2000-0x2017 and a 64 KiB scratch MMIO region at 0xFF000000.
"""
from __future__ import annotations

from typing import Callable, Mapping

from vmm.bus import IrqLine
from vmm.snapshot.state import PlainState

IOPORT_BASE, FLUSH_PORT, IOPORT_BYTE_BASE = 0xE0, 0xE4, 0xE8
IRQ_PORT_BASE, IRQ_LINES = 0x2000, 24
IOMEM_BASE, IOMEM_LEN = 0xFF000000, 0x10000
PAGE_MASK = ~0xFFF


class TestdevIoport(PlainState):
    """The 32-bit read-back register behind a 4-port window (QEMU maps the same register at
    0xE0 and, split into byte accesses, at 0xE8: to this model both are one window each, on one
    shared value). An access of ``size`` bytes at offset ``k`` reads or replaces bytes
    k..k+size-1 of the register (bits past byte 3 are dropped). A device may be put on the bus
    twice (0xE0 and 0xE8), since it holds no per-window state."""
    STATE = ("value",)

    __test__ = False                   # not a pytest class despite the name
    name = "pc-testdev-ioport"

    def __init__(self) -> None:
        self.value = 0

    def read(self, offset: int, size: int) -> int:
        return self.value >> 8 * (offset & 3) & _mask(size, offset)

    def write(self, offset: int, size: int, value: int) -> None:
        shift = 8 * (offset & 3)
        mask = _mask(size, offset) << shift
        self.value = (self.value & ~mask | value << shift & mask) & 0xFFFFFFFF


def _mask(size: int, offset: int) -> int:
    return (1 << 8 * min(size, 4 - (offset & 3))) - 1


class TestdevFlush(PlainState):
    """Port 0xE4: a 32-bit write names a guest-physical page whose host mapping QEMU drops and
    re-creates (mprotect), to test that the guest sees the same memory afterwards. Here the page
    address goes to ``on_flush`` (None: nothing to do). Reads are 0."""
    STATE = ()

    __test__ = False
    name = "pc-testdev-flush"

    def __init__(self, on_flush: Callable[[int], None] | None = None) -> None:
        self.on_flush = on_flush

    def read(self, offset: int, size: int) -> int:
        return 0

    def write(self, offset: int, size: int, value: int) -> None:
        if size == 4 and self.on_flush is not None:
            self.on_flush(value & PAGE_MASK)


class TestdevIrq(PlainState):
    """Ports 0x2000 + n (n = 0..23): a byte write sets ISA IRQ line n to the truth of the value
    (raise on non-zero, lower on 0), as ``qemu_set_irq(isa_get_irq(n), !!data)``. Reads are 0.
    ``lines`` maps n to the IrqLine to drive (on a PC, to both the 8259 and the IOAPIC pin);
    a line missing from the map is not wired and writes to it are dropped."""
    STATE = ()

    __test__ = False
    name = "pc-testdev-irq"

    def __init__(self, lines: Mapping[int, IrqLine]) -> None:
        self.lines = lines

    def read(self, offset: int, size: int) -> int:
        return 0

    def write(self, offset: int, size: int, value: int) -> None:
        line = self.lines.get(offset)
        if line is None:
            return
        if value & 0xFF:
            line.raise_()
        else:
            line.lower()


class TestdevIomem(PlainState):
    """64 KiB of scratch memory behind an MMIO window: little-endian accesses of any size read
    back what was written (0 until then); an access running past the end is cut there."""
    STATE = ("buffer",)

    __test__ = False
    name = "pc-testdev-iomem"

    def __init__(self) -> None:
        self.buffer = bytearray(IOMEM_LEN)

    def read(self, offset: int, size: int) -> int:
        return int.from_bytes(self.buffer[offset:offset + size], "little")

    def write(self, offset: int, size: int, value: int) -> None:
        data = value.to_bytes(size, "little")[:IOMEM_LEN - offset]
        self.buffer[offset:offset + len(data)] = data
