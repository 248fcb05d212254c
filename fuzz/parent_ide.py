"""Hostile ATA programs for the parent partition's IDE channel (vmm/devices/ide.py on the board
the parent builds for a child: 0x1F0-0x1F7 and 0x3F6), and the disk image they run against.

A program is what a driver would do, with hostile values: select a drive (the absent slave too),
program the task file with a sector count (0 means 256) and an LBA28 or CHS address near the
image's end, past it, or anywhere in the 28-bit space, issue a command (reads, writes, their
MULTIPLE forms, SET MULTIPLE, IDENTIFY, diagnostics, unknown opcodes), maybe pulse SRST or
nIEN, then move data through the data port for up to several sectors — as a REP INSW/OUTSW
does, one access per record, in byte, word or dword size — well past what the command allows.

The image is a few whole sectors plus a partial one, between two neighbour files: a program may
change the whole sectors and nothing else. ``DiskFixture.damage`` says what went wrong: a
neighbour changed, the image grew or shrank, or its partial tail sector changed.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from hypervisors.micro.wire import Op, pack
from vmm.devices.ide import (
    CMD_EXECUTE_DIAGNOSTIC,
    CMD_FLUSH_CACHE,
    CMD_IDENTIFY,
    CMD_INITIALIZE_PARAMETERS,
    CMD_READ_MULTIPLE,
    CMD_READ_SECTORS,
    CMD_READ_VERIFY,
    CMD_SET_MULTIPLE,
    CMD_WRITE_MULTIPLE,
    CMD_WRITE_SECTORS,
    SECTOR,
)
from vmm.pc.board import IDE_PRIMARY, IDE_PRIMARY_CONTROL

IMAGE_SECTORS = 8
TAIL = 100                          # bytes of a partial sector after the last whole one
NEIGHBOUR = bytes([0x5A]) * 4096
COMMANDS = (CMD_READ_SECTORS, CMD_READ_SECTORS + 1, CMD_WRITE_SECTORS, CMD_WRITE_SECTORS + 1,
            CMD_READ_MULTIPLE, CMD_WRITE_MULTIPLE, CMD_SET_MULTIPLE, CMD_READ_VERIFY,
            CMD_IDENTIFY, CMD_EXECUTE_DIAGNOSTIC, CMD_INITIALIZE_PARAMETERS, CMD_FLUSH_CACHE)
DATA, STATUS_COMMAND = IDE_PRIMARY, IDE_PRIMARY + 7
MAX_TRANSFERS = 1200                # data-port accesses after one command: past two sectors


@dataclass
class DiskFixture:
    """The image the parent's IDE channel serves, and the files on either side of it."""
    directory: Path

    def __post_init__(self):
        self.image = self.directory / "disk.img"
        self.neighbours = (self.directory / "before.img", self.directory / "after.img")
        for neighbour in self.neighbours:
            neighbour.write_bytes(NEIGHBOUR)
        self.tail = bytes(range(TAIL))
        self.image.write_bytes(bytes(IMAGE_SECTORS * SECTOR) + self.tail)

    def damage(self) -> str:
        for neighbour in self.neighbours:
            if neighbour.read_bytes() != NEIGHBOUR:
                return f"the neighbour file {neighbour.name} of the disk image changed"
        content = self.image.read_bytes()
        if len(content) != IMAGE_SECTORS * SECTOR + TAIL:
            return f"the disk image is {len(content)} bytes, not {IMAGE_SECTORS * SECTOR + TAIL}"
        if content[IMAGE_SECTORS * SECTOR:] != self.tail:
            return "the disk image's partial last sector (not addressable) changed"
        return ""


def write(port: int, value: int, size: int = 1) -> bytes:
    return pack(Op.IO_WRITE, size, port, value)


def read(port: int, size: int = 1) -> bytes:
    return pack(Op.IO_READ, size, port)


def hostile_lba(rng: random.Random) -> int:
    return rng.choice((0, IMAGE_SECTORS - 1, IMAGE_SECTORS, IMAGE_SECTORS + 1,
                       rng.randrange(IMAGE_SECTORS + 2), rng.randrange(1 << 28), (1 << 28) - 1))


def task_file(rng: random.Random) -> list[bytes]:
    """Drive select, sector count and address: LBA28 (bits 27:24 in the device register) or CHS
    (any cylinder, head and sector, 0 among them)."""
    slave = 0x10 if rng.random() < 0.15 else 0
    count = rng.choice((0, 1, 2, 3, IMAGE_SECTORS, rng.randrange(256)))
    if rng.random() < 0.8:
        lba = hostile_lba(rng)
        device = 0xE0 | slave | lba >> 24 & 0xF
        low, mid, high = lba & 0xFF, lba >> 8 & 0xFF, lba >> 16 & 0xFF
    else:
        device = 0xA0 | slave | rng.randrange(16)
        low, mid, high = rng.randrange(256), rng.randrange(256), rng.randrange(256)
    return [write(IDE_PRIMARY + 6, device), write(IDE_PRIMARY + 2, count),
            write(IDE_PRIMARY + 3, low), write(IDE_PRIMARY + 4, mid),
            write(IDE_PRIMARY + 5, high)]


def transfers(rng: random.Random) -> list[bytes]:
    """A REP INS/OUTS through the data port, longer than any command allows."""
    size = rng.choice((2, 2, 2, 4, 1))
    count = rng.choice((1, SECTOR // size, SECTOR // size + 1, rng.randrange(MAX_TRANSFERS)))
    if rng.random() < 0.5:
        return [read(DATA, size)] * count
    return [write(DATA, rng.getrandbits(8 * size), size) for _ in range(count)]


def ide_program(rng: random.Random) -> list[bytes]:
    """One hostile command and its data phase, as the records the hypervisor would send."""
    program = task_file(rng)
    if rng.random() < 0.1:
        program.append(write(IDE_PRIMARY_CONTROL, rng.choice((0x04, 0x02, 0x00, 0xFF))))
    command = rng.choice(COMMANDS) if rng.random() < 0.9 else rng.randrange(256)
    program += [write(STATUS_COMMAND, command), read(IDE_PRIMARY_CONTROL), read(STATUS_COMMAND)]
    program += transfers(rng)
    if rng.random() < 0.3:
        program += transfers(rng)          # a second burst: reads after writes, or more of them
    return program + [read(IDE_PRIMARY + 1), read(STATUS_COMMAND)]
