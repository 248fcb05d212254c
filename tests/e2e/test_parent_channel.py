"""A partition's channel to the parent partition under records the hypervisor never sends (found
by `trapvisor fuzz --parent`), written into its shared slot: each gets a defined answer, a refusal
(FAULT, then REPLY, the partition's devices untouched) or the end of that channel (FAULT, REPLY,
then its socket closes), and never a traceback in the parent."""
from __future__ import annotations

import time

import pytest

from emu.memory import GuestMemory
from fuzz.parent import RAM_SIZE, HostileChild
from hypervisors.micro.hypervisor import ParentProcess
from hypervisors.micro.slot import REQUEST_CAPACITY
from hypervisors.micro.wire import HEADER, MAX_PAYLOAD, Op, Record, pack

DEBUG_CONSOLE = 0xE9
TESTDEV_PAGE = 0xFF000000           # pc-testdev's MMIO scratch page, on the parent's board


@pytest.fixture
def parent():
    process = ParentProcess()
    yield process
    process.close()


def answers(child: HostileChild, record: bytes,
            length: int | None = None) -> list[tuple[int, bytes]]:
    """The records of one answer, up to and including its REPLY: (op, payload)."""
    records = child.exchange(record, length)
    assert not isinstance(records, str), records
    return [(message.op, message.payload) for message in records]


@pytest.mark.parametrize("record, refusal", [
    (pack(Op.MODULES), b"refused: op 8 is not a request on a partition's channel"),
    (pack(200, 1, DEBUG_CONSOLE), b"refused: op 200 is not a request"),
    (pack(Op.IO_READ, 3, DEBUG_CONSOLE), b"refused: a 3-byte access to port 0xe9"),
    (pack(Op.IO_WRITE, 3, DEBUG_CONSOLE, 0x41), b"refused: a 3-byte access to port 0xe9"),
    (pack(Op.MMIO_READ, 8, 0, TESTDEV_PAGE),
     b"refused: a 8-byte MMIO access at 0xff000000 (the channel carries 1, 2 or 4 bytes)"),
    (pack(Op.MMIO_WRITE, 4, 0, TESTDEV_PAGE, payload=b"ab"),
     b"refused: a 4-byte MMIO access at 0xff000000"),
], ids=["modules", "unknown-op", "in-of-3-bytes", "out-of-3-bytes", "mmio-of-8-bytes",
        "mmio-write-short-data"])
def test_a_request_the_channel_does_not_carry_is_refused_and_the_partition_goes_on(
        parent, capfd, record, refusal):
    child = HostileChild(parent, 1, GuestMemory(RAM_SIZE))
    (fault, text), (reply, _) = answers(child, record)
    assert (fault, reply) == (Record.FAULT, Record.REPLY) and text.startswith(refusal), text
    assert child.send(pack(Op.IO_READ, 1, DEBUG_CONSOLE)) == "reply"  # devices still served
    child.close()
    assert parent.alive() and "Traceback" not in capfd.readouterr().err


@pytest.mark.parametrize("record, length, says", [
    (HEADER.pack(Op.POST_MESSAGE, 0, 0, 0, 0, MAX_PAYLOAD + 1), None,
     b"the channel ends: record of 1048577 payload bytes exceeds 1048576"),
    (pack(Op.IO_READ, 1, DEBUG_CONSOLE)[:7], None,
     b"the channel ends: a 7-byte record is shorter than its 20-byte header"),
    (HEADER.pack(Op.POST_MESSAGE, 0, 0, 0, 0, 64) + b"x" * 10, None,
     b"the channel ends: record announces 64 payload bytes but carries 10"),
    (pack(Op.IO_READ, 1, DEBUG_CONSOLE), REQUEST_CAPACITY + 1,
     b"the channel ends: a 1048597-byte message overflows its 1048596-byte area"),
    (pack(Op.IO_READ, 1, DEBUG_CONSOLE) + b"junk", None,
     b"the channel ends: 4 bytes follow the record"),
], ids=["oversized", "truncated-header", "short-payload", "past-the-area", "trailing-bytes"])
def test_an_unframeable_record_ends_its_channel_with_a_fault_and_no_traceback(
        parent, capfd, record, length, says):
    child = HostileChild(parent, 1, GuestMemory(RAM_SIZE))
    bystander = HostileChild(parent, 2, GuestMemory(RAM_SIZE))
    (fault, text), (reply, _) = answers(child, record, length)
    assert (fault, reply) == (Record.FAULT, Record.REPLY)
    assert text == says, text
    assert child.send(pack(Op.IO_READ, 1, DEBUG_CONSOLE)) == "dropped"   # the parent let go
    assert bystander.send(pack(Op.IO_READ, 1, DEBUG_CONSOLE)) == "reply"
    time.sleep(0.1)   # a worker thread's traceback would be printed by now
    assert parent.alive() and "Traceback" not in capfd.readouterr().err
    child.close()
    bystander.close()
