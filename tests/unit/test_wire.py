"""The hypervisor <-> parent protocol: fixed headers, payloads, EOF, partition configuration."""
from __future__ import annotations

import io

import pytest

from hypervisors.micro.wire import (HEADER, MAX_PAYLOAD, Op, PartitionConfig, Record, State, pack,
                                    read_message)


def test_a_record_round_trips_through_a_stream():
    stream = io.BytesIO(pack(Op.IO_WRITE, 1, 0x3F8, 0x41, 12345) + pack(Record.REPLY, 5, 0, 7, -1))
    write = read_message(stream)
    assert (write.op, write.size, write.aux, write.value, write.time) == (Op.IO_WRITE, 1, 0x3F8,
                                                                          0x41, 12345)
    reply = read_message(stream)
    assert (reply.op, State(reply.size), reply.time) == (Record.REPLY,
                                                          State.INT_OUTPUT | State.COUNTING, -1)


def test_the_header_is_twenty_bytes_and_carries_a_payload():
    record = pack(Op.POST_MESSAGE, value=1, payload=b"\x01\x00\x00\x00hello")
    assert HEADER.size == 20 and len(record) == 29
    assert read_message(io.BytesIO(record)).payload == b"\x01\x00\x00\x00hello"


def test_a_closed_or_truncated_channel_is_eof():
    with pytest.raises(EOFError):
        read_message(io.BytesIO(b""))
    with pytest.raises(EOFError):
        read_message(io.BytesIO(pack(Record.OUTPUT, payload=b"abc")[:-1]))


def test_an_oversized_length_is_refused_before_reading():
    header = HEADER.pack(Record.OUTPUT, 0, 0, 0, 0, MAX_PAYLOAD + 1)
    with pytest.raises(ValueError, match="exceeds"):
        read_message(io.BytesIO(header))


def test_partition_configuration_round_trips_and_rejects_garbage():
    config = PartitionConfig(32 << 20, b"abc\n", "/tmp/disk.img", "uart16550")
    assert PartitionConfig.decode(config.encode()) == config
    with pytest.raises(ValueError, match="malformed"):
        PartitionConfig.decode(config.encode() + b"x")
