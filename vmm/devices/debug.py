"""Debug ports a guest uses to talk to its VMM: QEMU's isa-debug-exit (0xF4), the Bochs/QEMU
port 0xE9 console, and a null device (port 0x80 style) that only counts accesses for benchmarks.
"""
from __future__ import annotations

from typing import Callable

from vmm.bus import all_ones
from vmm.snapshot.state import PlainState

DEBUG_CONSOLE_ID = 0xE9


class DebugExit(PlainState):
    """isa-debug-exit: a write ends the run with a status. The value is passed raw (QEMU would
    turn it into the process exit code (v << 1) | 1); a 1-byte write passes only its low byte."""
    STATE = ()

    name = "debug-exit"

    def __init__(self, on_exit: Callable[[int], None]) -> None:
        self._on_exit = on_exit

    def read(self, offset: int, size: int) -> int:
        return all_ones(size)

    def write(self, offset: int, size: int, value: int) -> None:
        self._on_exit(value & 0xFF if size == 1 else value)


class DebugConsole(PlainState):
    """Port 0xE9 console: each write emits one byte; a read returns 0xE9 so guests can detect it."""
    STATE = ()

    name = "debug-console"

    def __init__(self, sink: Callable[[bytes], None]) -> None:
        self._sink = sink

    def read(self, offset: int, size: int) -> int:
        return DEBUG_CONSOLE_ID

    def write(self, offset: int, size: int, value: int) -> None:
        self._sink(bytes((value & 0xFF,)))


class NullDevice(PlainState):
    """Reads 0, ignores writes, counts both: the cheapest possible device for exit benchmarks."""
    STATE = ("reads", "writes")

    def __init__(self, name: str = "null") -> None:
        self.name = name
        self.reads = 0
        self.writes = 0

    def read(self, offset: int, size: int) -> int:
        self.reads += 1
        return 0

    def write(self, offset: int, size: int, value: int) -> None:
        self.writes += 1
