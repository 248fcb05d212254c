"""A hostile child against a real parent partition process (hypervisors/micro/parent/root.py):
each case opens a fresh partition and sends it seeded random intercept records (port reads and
writes of any port, size and value, INTA, timer updates, input polls, posted messages and
events with random payloads, unknown ops, absurd times), written into the partition's shared
channel slot as the hypervisor writes them, and malformed ones (a truncated header, a length past
the limit, a payload cut short, a published length past the request area), then checks that the
parent is still up, that a bystander partition it serves still answers, and that not a byte of
child RAM changed and none of it is mapped in the parent (no GPADL was ever granted).

Every board device the parent holds for a child is in reach (vmm/pc/board.py: the 8259 pair, the
PIT, the i8042, the RTC, port 0x92, pc-testdev, the consoles, the CRTC, COM1, the PCI host, the
IDE channel); the APICs live in the hypervisor, not the parent. Half the cases also run a hostile
ATA program (fuzz/parent_ide.py) against a small disk image between two neighbour files, which
must stay untouched, as must the image's size and its partial last sector; the IDE model must
answer every access of a program (a FAULT from it is a failure, not a contained one).

Per record the parent either replies (REPLY, after any notifications), contains a device
failure (a FAULT record: the partition stops, the parent goes on), refuses the request (a FAULT
record saying so: an unknown op, Op.MODULES, which only the control socket answers, a port access
of a size IN/OUT cannot make) or ends the channel (a record it cannot frame: FAULT, REPLY, and
the partition's socket closes). Generated ops leave MODULES out so cases get past it.
"""
from __future__ import annotations

import os
import random
import struct
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from emu.memory import GuestMemory
from fuzz.parent_ide import DiskFixture, ide_program
from hypervisors.micro.hypervisor import ParentProcess
from hypervisors.micro.slot import REP_LEN, REP_SEQ, REQUEST_CAPACITY, PeerGone
from hypervisors.micro.wire import (
    HEADER,
    MAX_PAYLOAD,
    MalformedRecord,
    Message,
    Op,
    PartitionConfig,
    Record,
    pack,
    unpack_record,
)

RAM_SIZE = 1 << 20
CANARY = 0xA5
DEBUG_CONSOLE = 0xE9
DEVICE_PORTS = (0x20, 0x21, 0xA0, 0xA1, *range(0x40, 0x44), *range(0x60, 0x65), 0x70, 0x71,
                0x80, 0x92, *range(0xE0, 0xEA), *range(0xF4, 0xF8), 0x3D4, 0x3D5,
                *range(0x3F8, 0x400), *range(0xCF8, 0xD00), *range(0x2000, 0x2018),
                *range(0x1F0, 0x1F8), 0x3F6)
REPLY_TIMEOUT = 10.0
MESSAGES_PER_CASE = 24


@dataclass
class ParentTally:
    cases: int = 0
    records: int = 0
    answers: Counter = field(default_factory=Counter)      # reply / fault / dropped
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0
    ide_programs: int = 0
    ide_records: int = 0

    def report(self) -> str:
        answers = ", ".join(f"{k} {v}" for k, v in sorted(self.answers.items()))
        total = self.records + self.ide_records
        return (f"{self.cases} hostile partitions, {total} records in {self.seconds:.1f} s "
                f"({total / max(self.seconds, 1e-9):.0f} records/s); {self.records} random "
                f"records: {answers}; {self.ide_programs} ATA programs ({self.ide_records} "
                f"records); {len(self.failures)} failure(s)")


def random_record(rng: random.Random) -> bytes:
    """One request, well-formed or not."""
    choice = rng.random()
    if choice < 0.05:
        return pack(rng.randrange(256), rng.randrange(256), rng.randrange(1 << 16))
    op = rng.choice([op for op in Op if op != Op.MODULES])   # MODULES: always refused
    port = rng.choice(DEVICE_PORTS) if rng.random() < 0.8 else rng.randrange(1 << 16)
    size = rng.choice((1, 2, 4)) if rng.random() < 0.9 else rng.choice((0, 3, 8, 255))
    when = rng.choice((0, rng.randrange(1 << 40), -1, (1 << 63) - 1, rng.randrange(1 << 20)))
    payload = b""
    if op == Op.POST_MESSAGE:
        payload = struct.pack("<I", rng.randrange(1, 40)) + rng.randbytes(rng.randrange(0, 300))
    return pack(op, size, port, rng.getrandbits(32), when, payload)


def malformed_record(rng: random.Random) -> tuple[bytes, int]:
    """A record the channel cannot frame, and the length published for it: the last thing sent."""
    choice = rng.randrange(4)
    if choice == 0:
        record = pack(Op.IO_READ, 1, DEBUG_CONSOLE)[:rng.randrange(1, HEADER.size)]
    elif choice == 1:
        record = HEADER.pack(Op.POST_MESSAGE, 0, 0, 0, 0, MAX_PAYLOAD + rng.randrange(1, 1 << 20))
    elif choice == 2:
        record = HEADER.pack(Op.POST_MESSAGE, 0, 0, 0, 0, 64) + rng.randbytes(rng.randrange(64))
    else:
        record = pack(Op.IO_READ, 1, DEBUG_CONSOLE)
        return record, REQUEST_CAPACITY + rng.randrange(1, 1 << 31)
    return record, len(record)


class HostileChild:
    """A partition of the parent, driven through its raw channel slot."""

    def __init__(self, parent: ParentProcess, partition_id: int, memory: GuestMemory,
                 drives: tuple[str, ...] = ()):
        self.link, _layout = parent.create_partition(
            partition_id, PartitionConfig(RAM_SIZE, b"", "", "", drives), memory.fd)
        self.seq = 0

    def exchange(self, record: bytes, length: int | None = None) -> list[Message] | str:
        """Write ``record`` into the request area, publish ``length`` (default: the record's)
        and return the answer's records; 'dropped' if the parent let go of the channel, 'no
        answer' or 'garbled answer' if it misbehaved."""
        link = self.link
        link.map[link.out_offset:link.out_offset + len(record)] = record
        self.seq = (self.seq + 1) & 0xFFFFFFFF
        link.publish(self.seq, len(record) if length is None else length)
        try:
            link.wait_for(REP_SEQ, self.seq, REPLY_TIMEOUT)
            offset, end = link.incoming(REP_LEN)
            records = []
            while offset < end:
                answer, offset = unpack_record(link.map, offset, end)
                records.append(answer)
        except PeerGone:
            return "dropped"
        except TimeoutError:
            return "no answer"
        except MalformedRecord:
            return "garbled answer"
        return records if records and records[-1].op == Record.REPLY else "garbled answer"

    def send(self, record: bytes, length: int | None = None) -> str:
        """'reply' or 'fault' (a FAULT among the notifications), or what went wrong."""
        answer = self.exchange(record, length)
        if isinstance(answer, str):
            return answer
        return "fault" if any(r.op == Record.FAULT for r in answer) else "reply"

    def close(self) -> None:
        self.link.close()


def memfd_mapped_in(pid: int, memory: GuestMemory) -> list[str]:
    """The parent's mappings of this child's RAM (none may exist without a GPADL)."""
    target = os.readlink(f"/proc/self/fd/{memory.fd}").removesuffix(" (deleted)")
    inode = os.fstat(memory.fd).st_ino
    with open(f"/proc/{pid}/maps") as maps:
        return [line.strip() for line in maps
                if target in line and line.split()[4] == str(inode)]


def run(cases: int, seed: int) -> ParentTally:
    with tempfile.TemporaryDirectory(prefix="trapvisor-fuzz-disk-") as directory:
        return run_with_disk(cases, seed, DiskFixture(Path(directory)))


def run_with_disk(cases: int, seed: int, disk: DiskFixture) -> ParentTally:
    tally = ParentTally()
    started = time.perf_counter()
    parent = ParentProcess()
    victim_ram, bystander_ram = GuestMemory(RAM_SIZE), GuestMemory(RAM_SIZE)
    victim_ram.write(0, bytes([CANARY]) * RAM_SIZE)
    try:
        bystander = HostileChild(parent, 1, bystander_ram)
        for number in range(cases):
            rng = random.Random(seed + number)
            child = HostileChild(parent, number + 2, victim_ram, (str(disk.image),))
            problem = run_ide(child, rng, tally) if rng.random() < 0.5 else ""
            for _ in range(0 if problem else rng.randint(1, MESSAGES_PER_CASE)):
                answer = child.send(random_record(rng))
                tally.records += 1
                tally.answers[answer] += 1
                if answer != "reply":
                    break
            else:
                if rng.random() < 0.3:
                    tally.answers[f"malformed: {child.send(*malformed_record(rng))}"] += 1
            child.close()
            tally.cases += 1
            problem = problem or check(parent, bystander, victim_ram) or disk.damage()
            if problem:
                tally.failures.append(f"seed {seed + number}: {problem}")
                break
    finally:
        parent.close()
        tally.seconds = time.perf_counter() - started
    return tally


def run_ide(child: HostileChild, rng: random.Random, tally: ParentTally) -> str:
    """One hostile ATA program; what went wrong, if the channel did not answer every record."""
    program = ide_program(rng)
    tally.ide_programs += 1
    for record in program:
        answer = child.send(record)
        tally.ide_records += 1
        if answer != "reply":
            return f"the IDE channel answered {answer!r} to {record[:HEADER.size].hex()}"
    return ""


def check(parent: ParentProcess, bystander: HostileChild, victim_ram: GuestMemory) -> str:
    if not parent.alive():
        return f"the parent partition died ({parent.describe_exit()})"
    answer = bystander.send(pack(Op.IO_READ, 1, DEBUG_CONSOLE))
    if answer != "reply":
        return f"the bystander partition got {answer!r} for a read of port 0xE9"
    if victim_ram.read(0, RAM_SIZE) != bytes([CANARY]) * RAM_SIZE:
        return "the child's RAM changed though no GPADL granted any of it"
    mapped = memfd_mapped_in(parent.pid, victim_ram)
    if mapped:
        return "the parent maps child RAM no GPADL granted: " + "; ".join(mapped)
    return ""


def main(cases: int, seed: int) -> int:
    tally = run(cases, seed)
    print(tally.report())
    for failure in tally.failures:
        print(f"  {failure}")
    return 1 if tally.failures else 0
