"""Guest-physical RAM: one shared mapping of a memfd that Unicorn executes from and the VMM reads.

The RAM is a sealed-size ``memfd`` mapped MAP_SHARED, so another process (the micro hypervisor's
parent partition) can be handed the descriptor and map the page ranges a guest grants it; the VMM
reads and writes it directly, without going through Unicorn's API.
"""
from __future__ import annotations

import ctypes
import fcntl
import mmap
import os
import struct
from enum import Enum

PAGE_SIZE = 0x1000
MIN_RAM = 1 << 20


class Access(Enum):
    """The kind of a guest memory access (as the CPU reports one that hits no RAM)."""
    READ = "read"
    WRITE = "write"
    FETCH = "fetch"


class GuestMemoryError(ValueError):
    """A guest-physical access outside RAM, or an impossible RAM size."""


class GuestMemory:
    """Guest-physical RAM starting at address 0."""

    def __init__(self, size: int):
        if size < MIN_RAM or size % PAGE_SIZE:
            raise GuestMemoryError(
                f"guest RAM must be a multiple of 4 KiB and at least 1 MiB, not {size:#x} bytes")
        self.size = size
        self.fd = os.memfd_create("trapvisor-guest-ram", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        os.ftruncate(self.fd, size)
        fcntl.fcntl(self.fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW)
        self.mmap = mmap.mmap(self.fd, size, flags=mmap.MAP_SHARED)
        self.view = memoryview(self.mmap)
        self.address = ctypes.addressof(ctypes.c_char.from_buffer(self.mmap))
        # the VMM's MMU hears of the stores made through write()/write_u32() (DMA, debugger
        # writes, emulated instructions): (address, length) -> None
        self.on_host_write = None

    def contains(self, addr: int, length: int = 1) -> bool:
        return 0 <= addr and addr + length <= self.size

    def _check(self, addr: int, length: int) -> None:
        if not self.contains(addr, length):
            raise GuestMemoryError(
                f"guest-physical range {addr:#x}+{length:#x} is outside RAM (0..{self.size:#x})")

    def read(self, addr: int, length: int) -> bytes:
        self._check(addr, length)
        return self.mmap[addr:addr + length]

    def write(self, addr: int, data: bytes) -> None:
        self._check(addr, len(data))
        self.mmap[addr:addr + len(data)] = data
        if self.on_host_write is not None:
            self.on_host_write(addr, len(data))

    def read_u32(self, addr: int) -> int:
        self._check(addr, 4)
        return struct.unpack_from("<I", self.mmap, addr)[0]

    def write_u32(self, addr: int, value: int) -> None:
        self._check(addr, 4)
        struct.pack_into("<I", self.mmap, addr, value & 0xFFFFFFFF)
        if self.on_host_write is not None:
            self.on_host_write(addr, 4)

    def close(self) -> None:
        self.view.release()
        self.mmap.close()
        os.close(self.fd)
