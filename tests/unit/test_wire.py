"""The hypervisor <-> parent protocol: fixed headers, payloads, EOF, partition configuration."""
from __future__ import annotations

import pytest

from hypervisors.micro.wire import (
    HEADER,
    MAX_PAYLOAD,
    MalformedRecord,
    Op,
    OversizedRecord,
    PartitionConfig,
    Record,
    State,
    pack,
    unpack_record,
)


def test_records_follow_each_other_in_a_buffer():
    buffer = pack(Op.IO_WRITE, 1, 0x3F8, 0x41, 12345) + pack(Record.REPLY, 5, 0, 7, -1)
    write, offset = unpack_record(buffer, 0, len(buffer))
    assert (write.op, write.size, write.aux, write.value, write.time) == (Op.IO_WRITE, 1, 0x3F8,
                                                                          0x41, 12345)
    reply, offset = unpack_record(buffer, offset, len(buffer))
    assert (reply.op, State(reply.size), reply.time) == (Record.REPLY,
                                                          State.INT_OUTPUT | State.COUNTING, -1)
    assert offset == len(buffer)


def test_the_header_is_twenty_bytes_and_carries_a_payload():
    record = pack(Op.POST_MESSAGE, value=1, payload=b"\x01\x00\x00\x00hello")
    assert HEADER.size == 20 and len(record) == 29
    assert unpack_record(record, 0, len(record))[0].payload == b"\x01\x00\x00\x00hello"


def test_a_record_cut_short_is_malformed():
    with pytest.raises(MalformedRecord, match="shorter than its 20-byte header"):
        unpack_record(b"\x01" * 7, 0, 7)
    record = pack(Record.OUTPUT, payload=b"abc")
    with pytest.raises(MalformedRecord, match="announces 3 payload bytes but carries 2"):
        unpack_record(record, 0, len(record) - 1)


def test_an_oversized_length_is_refused_before_reading():
    header = HEADER.pack(Record.OUTPUT, 0, 0, 0, 0, MAX_PAYLOAD + 1)
    with pytest.raises(OversizedRecord, match="exceeds"):
        unpack_record(header, 0, len(header))


def test_partition_configuration_round_trips_and_rejects_garbage():
    config = PartitionConfig(32 << 20, b"abc\n", "/tmp/disk.img", "uart16550")
    assert PartitionConfig.decode(config.encode()) == config
    with pytest.raises(ValueError, match="malformed"):
        PartitionConfig.decode(config.encode() + b"x")
