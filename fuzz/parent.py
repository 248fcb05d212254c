"""A hostile child against a real parent partition process (hypervisors/micro/parent/root.py):
each case opens a fresh partition and sends it seeded random intercept records (port reads and
writes of any port, size and value, INTA, timer updates, input polls, posted messages and
events with random payloads, unknown ops, absurd times) and malformed ones (a truncated header,
a length past the limit, a payload cut short), then checks that the parent is still up, that a
bystander partition it serves still answers, and that not a byte of child RAM changed and none
of it is mapped in the parent (no GPADL was ever granted).

Per record the parent either replies (REPLY, after any notifications), contains a device
failure (a FAULT record: the partition stops, the parent goes on), refuses the request (a FAULT
record saying so: an unknown op, Op.MODULES, which only the control socket answers, a port access
of a size IN/OUT cannot make) or ends the channel (a record past the length limit: FAULT, REPLY,
close). Generated ops leave MODULES out so cases get past it.
"""
from __future__ import annotations

import os
import random
import socket
import struct
import time
from collections import Counter
from dataclasses import dataclass, field

from emu.memory import GuestMemory
from hypervisors.micro.hypervisor import ParentProcess
from hypervisors.micro.wire import HEADER, MAX_PAYLOAD, Op, PartitionConfig, Record, pack

RAM_SIZE = 1 << 20
CANARY = 0xA5
DEBUG_CONSOLE = 0xE9
DEVICE_PORTS = (0x20, 0x21, 0xA0, 0xA1, 0x40, 0x41, 0x42, 0x43, 0xE9, 0x80, 0xF4, 0xF5,
                *range(0x3F8, 0x400))
REPLY_TIMEOUT = 10.0
MESSAGES_PER_CASE = 24


@dataclass
class ParentTally:
    cases: int = 0
    records: int = 0
    answers: Counter = field(default_factory=Counter)      # reply / fault / dropped
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def report(self) -> str:
        answers = ", ".join(f"{k} {v}" for k, v in sorted(self.answers.items()))
        return (f"{self.cases} hostile partitions, {self.records} records in {self.seconds:.1f} s "
                f"({self.records / max(self.seconds, 1e-9):.0f} records/s): {answers}; "
                f"{len(self.failures)} failure(s)")


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


def malformed_record(rng: random.Random) -> bytes:
    """A record the channel cannot frame: the last thing sent before closing."""
    choice = rng.randrange(3)
    if choice == 0:
        return pack(Op.IO_READ, 1, DEBUG_CONSOLE)[:rng.randrange(1, HEADER.size)]
    if choice == 1:
        return HEADER.pack(Op.POST_MESSAGE, 0, 0, 0, 0, MAX_PAYLOAD + rng.randrange(1, 1 << 20))
    return HEADER.pack(Op.POST_MESSAGE, 0, 0, 0, 0, 64) + rng.randbytes(rng.randrange(64))


def read_answer(stream) -> str:
    """'reply' or 'fault' (after any notifications), 'dropped' if the channel closed."""
    fault = False
    while True:
        header = stream.read(HEADER.size)
        if len(header) < HEADER.size:
            return "dropped"
        op, _size, _aux, _value, _time, length = HEADER.unpack(header)
        if length and len(stream.read(length)) < length:
            return "dropped"
        fault |= op == Record.FAULT
        if op == Record.REPLY:
            return "fault" if fault else "reply"


class HostileChild:
    """A partition of the parent, driven over its raw channel socket."""

    def __init__(self, parent: ParentProcess, partition_id: int, memory: GuestMemory):
        self.channel, _layout = parent.create_partition(
            partition_id, PartitionConfig(RAM_SIZE, b"", "", ""), memory.fd)
        self.channel.settimeout(REPLY_TIMEOUT)
        self.stream = self.channel.makefile("rb")

    def send(self, record: bytes, last: bool = False) -> str:
        """Send a record and read the answer; ``last``: then close our side of the channel
        (a record that cannot be framed is never answered: the parent must see EOF and let go)."""
        try:
            self.channel.sendall(record)
            if last:
                self.channel.shutdown(socket.SHUT_WR)
            return read_answer(self.stream)
        except (BrokenPipeError, ConnectionResetError):
            return "dropped"
        except socket.timeout:
            return "no answer"

    def close(self) -> None:
        self.stream.close()
        self.channel.close()


def memfd_mapped_in(pid: int, memory: GuestMemory) -> list[str]:
    """The parent's mappings of this child's RAM (none may exist without a GPADL)."""
    target = os.readlink(f"/proc/self/fd/{memory.fd}").removesuffix(" (deleted)")
    inode = os.fstat(memory.fd).st_ino
    with open(f"/proc/{pid}/maps") as maps:
        return [line.strip() for line in maps
                if target in line and line.split()[4] == str(inode)]


def run(cases: int, seed: int) -> ParentTally:
    tally = ParentTally()
    started = time.perf_counter()
    parent = ParentProcess()
    victim_ram, bystander_ram = GuestMemory(RAM_SIZE), GuestMemory(RAM_SIZE)
    victim_ram.write(0, bytes([CANARY]) * RAM_SIZE)
    try:
        bystander = HostileChild(parent, 1, bystander_ram)
        for number in range(cases):
            rng = random.Random(seed + number)
            child = HostileChild(parent, number + 2, victim_ram)
            for _ in range(rng.randint(1, MESSAGES_PER_CASE)):
                answer = child.send(random_record(rng))
                tally.records += 1
                tally.answers[answer] += 1
                if answer != "reply":
                    break
            else:
                if rng.random() < 0.3:
                    tally.answers[f"malformed: {child.send(malformed_record(rng), last=True)}"] += 1
            child.close()
            tally.cases += 1
            problem = check(parent, bystander, victim_ram)
            if problem:
                tally.failures.append(f"seed {seed + number}: {problem}")
                break
    finally:
        parent.close()
        tally.seconds = time.perf_counter() - started
    return tally


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
