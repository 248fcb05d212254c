"""Port-I/O and MMIO buses that route guest accesses to devices by address, plus IRQ lines.

Modelled on Firecracker's ``bus.rs`` and rust-vmm ``vm-device``: devices see offsets inside their
own window, the bus owns addresses, overlapping registrations are refused, and accesses nobody
claims read as all-ones (an undriven ISA data bus floats high).
"""
from __future__ import annotations

from bisect import bisect_right
from typing import Callable, Protocol

PIO_SPACE = 0x10000
BUS_KINDS = ("pio", "mmio")
ACCESS_SIZES = {"pio": frozenset((1, 2, 4)), "mmio": frozenset((1, 2, 4, 8))}


class BusDevice(Protocol):
    """A device window: offsets are relative to where the bus registered it."""

    name: str

    def read(self, offset: int, size: int) -> int: ...

    def write(self, offset: int, size: int, value: int) -> None: ...


class BusConflict(ValueError):
    """A registration would overlap a window that is already on the bus."""


class BadAccessSize(ValueError):
    """An access of a size the bus's instructions cannot make (a port access is 1, 2 or 4 bytes)."""


def all_ones(size: int) -> int:
    """The value an unclaimed access of ``size`` bytes reads: every data line high."""
    return (1 << (8 * size)) - 1


_ALL_ONES = tuple(all_ones(size) for size in range(9))


class Bus:
    """One address space ("pio" ports or "mmio" physical addresses) mapped to device windows.

    Lookup is by the first byte of an access: an access that starts inside a window and runs past
    its end is handed to that device whole, with the starting offset (as Firecracker does); an
    access that starts in a hole reads all-ones even if it ends inside a window. ``pio`` keeps a
    port -> (device, base) dict for the exit hot path; ``mmio`` bisects over the sorted windows.
    """

    def __init__(self, kind: str, on_insert: Callable[[int, int], None] | None = None) -> None:
        """``on_insert(base, length)`` is told of every window claimed (the VM maps MMIO windows
        into the CPU's physical address space with it)."""
        if kind not in BUS_KINDS:
            raise ValueError(f"bus kind must be one of {BUS_KINDS}, not {kind!r}")
        self.kind = kind
        self._on_insert = on_insert
        self._is_pio = kind == "pio"
        self._sizes = ACCESS_SIZES[kind]
        self._bases: list[int] = []
        self._windows: list[tuple[int, int, BusDevice]] = []
        self._ports: dict[int, tuple[BusDevice, int]] = {}

    def insert(self, device: BusDevice, base: int, length: int) -> None:
        """Claim ``[base, base + length)`` for ``device``; raise BusConflict on any overlap."""
        self._check_window(base, length)
        index = bisect_right(self._bases, base)
        for neighbour in self._windows[max(index - 1, 0):index + 1]:
            if neighbour[0] < base + length and base < neighbour[0] + neighbour[1]:
                raise BusConflict(self._conflict_message(device, base, length, neighbour))
        self._bases.insert(index, base)
        self._windows.insert(index, (base, length, device))
        if self._is_pio:
            self._ports.update((port, (device, base)) for port in range(base, base + length))
        if self._on_insert is not None:
            self._on_insert(base, length)

    def remove(self, device: BusDevice) -> None:
        """Drop every window ``device`` holds; raise KeyError if it holds none."""
        kept = [window for window in self._windows if window[2] is not device]
        if len(kept) == len(self._windows):
            raise KeyError(f"{getattr(device, 'name', device)!r} is not on the {self.kind} bus")
        self._windows = kept
        self._bases = [window[0] for window in kept]
        self._ports = {port: hit for port, hit in self._ports.items() if hit[0] is not device}

    def lookup(self, addr: int) -> tuple[BusDevice, int] | None:
        """The device claiming ``addr`` and the offset of ``addr`` in its window, or None."""
        hit = self._ports.get(addr) if self._is_pio else self._mmio_hit(addr)
        return None if hit is None else (hit[0], addr - hit[1])

    def read(self, addr: int, size: int) -> int:
        """Read ``size`` bytes at ``addr``; an unclaimed address reads all-ones."""
        if size not in self._sizes:
            raise self._bad_size(addr, size)
        hit = self._ports.get(addr) if self._is_pio else self._mmio_hit(addr)
        if hit is None:
            return _ALL_ONES[size]
        return hit[0].read(addr - hit[1], size)

    def write(self, addr: int, size: int, value: int) -> bool:
        """Write ``value`` masked to ``size`` bytes; False when unclaimed (the value is dropped)."""
        if size not in self._sizes:
            raise self._bad_size(addr, size)
        hit = self._ports.get(addr) if self._is_pio else self._mmio_hit(addr)
        if hit is None:
            return False
        hit[0].write(addr - hit[1], size, value & _ALL_ONES[size])
        return True

    def entries(self) -> list[tuple[int, int, BusDevice]]:
        """Every window as (base, length, device), sorted by base."""
        return list(self._windows)

    @staticmethod
    def devices_by_window(*buses: "Bus") -> dict[str, BusDevice]:
        """Every device on these buses, once, named by bus kind and window base ("pio:0x3f8",
        "mmio:0xff000000"): the names snapshots give device state under both hypervisors."""
        found: dict[str, BusDevice] = {}
        for bus in buses:
            for base, _length, device in bus.entries():
                if device not in found.values():
                    found[f"{bus.kind}:{base:#x}"] = device
        return found

    def _mmio_hit(self, addr: int) -> tuple[BusDevice, int] | None:
        index = bisect_right(self._bases, addr) - 1
        if index < 0:
            return None
        base, length, device = self._windows[index]
        return (device, base) if addr < base + length else None

    def _bad_size(self, addr: int, size: int) -> BadAccessSize:
        sizes = ", ".join(str(n) for n in sorted(self._sizes))
        return BadAccessSize(f"{self.kind}: a {size}-byte access at {addr:#x} (sizes: {sizes})")

    def _check_window(self, base: int, length: int) -> None:
        if base < 0 or length <= 0:
            raise ValueError(f"{self.kind}: bad window base={base:#x} length={length}")
        if self._is_pio and base + length > PIO_SPACE:
            raise ValueError(f"pio: window {base:#x}+{length} runs past port 0xffff")

    def _conflict_message(self, device, base, length, existing) -> str:
        old_base, old_length, old_device = existing
        return (f"{self.kind}: {getattr(device, 'name', device)} "
                f"[{base:#x}-{base + length - 1:#x}] overlaps "
                f"{getattr(old_device, 'name', old_device)} "
                f"[{old_base:#x}-{old_base + old_length - 1:#x}]")


class IrqLine:
    """One interrupt request wire into an interrupt controller; it carries a level, nothing more."""

    __slots__ = ("number", "_sink")

    def __init__(self, sink: Callable[[int, bool], None], number: int) -> None:
        self._sink = sink
        self.number = number

    def raise_(self) -> None:
        self._sink(self.number, True)

    def lower(self) -> None:
        self._sink(self.number, False)

    def pulse(self) -> None:
        """A rising then falling edge, as an edge-triggered source (the PIT's OUT) delivers."""
        self._sink(self.number, True)
        self._sink(self.number, False)

    def __repr__(self) -> str:
        return f"IrqLine({self.number})"
