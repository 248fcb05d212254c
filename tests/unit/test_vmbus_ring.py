"""VMBus ring buffers (hypervisors/micro/parent/vmbus.py) over plain bytearrays: layout, wrap-around,
signalling rules and the validation of everything the peer controls."""
from __future__ import annotations

import doctest
import struct

import pytest

from hypervisors.micro.parent import vmbus
from hypervisors.micro.parent.vmbus import (
    PAGE_SIZE, VM_PKT_COMP, VM_PKT_DATA_INBAND, PacketTooLarge, RingBuffer, RingCorrupt, RingError,
    RingFull)

DATA = PAGE_SIZE            # one data page


def make_ring(data_pages: int = 1) -> tuple[bytearray, RingBuffer]:
    ram = bytearray((1 + data_pages) * PAGE_SIZE)
    return ram, RingBuffer(memoryview(ram)).initialise()


def u32(ram: bytearray, offset: int) -> int:
    return struct.unpack_from("<I", ram, offset)[0]


def test_module_example_runs():
    assert doctest.testmod(vmbus).failed == 0


def test_header_layout_and_packet_bytes_match_linux():
    ram, ring = make_ring()
    assert u32(ram, vmbus.FEATURE_BITS) == vmbus.FEAT_PENDING_SEND_SZ
    ring.write_packet(VM_PKT_DATA_INBAND, b"abc", trans_id=0x1122, flags=1)
    # descriptor: type 6, offset8 2, len8 (16 + 8) / 8 = 3, flags 1, trans_id
    assert struct.unpack_from("<HHHHQ", ram, PAGE_SIZE) == (6, 2, 3, 1, 0x1122)
    assert ram[PAGE_SIZE + 16:PAGE_SIZE + 24] == b"abc" + bytes(5)
    assert struct.unpack_from("<Q", ram, PAGE_SIZE + 24)[0] == 0 << 32   # old write index 0
    assert u32(ram, vmbus.WRITE_INDEX) == 32 and u32(ram, vmbus.READ_INDEX) == 0
    ring.write_packet(VM_PKT_DATA_INBAND, b"")
    assert struct.unpack_from("<Q", ram, PAGE_SIZE + 32 + 16)[0] == 32 << 32


def test_signal_only_on_empty_to_non_empty_and_unmasked():
    _, ring = make_ring()
    assert ring.write_packet(VM_PKT_DATA_INBAND, b"1") is True
    assert ring.write_packet(VM_PKT_DATA_INBAND, b"2") is False
    ring.read_packet(), ring.read_packet()
    ring.interrupt_mask = 1
    assert ring.write_packet(VM_PKT_DATA_INBAND, b"3") is False


def test_packets_wrap_around_the_data_area():
    _, ring = make_ring()
    payloads = [bytes([i]) * (100 + 37 * i) for i in range(40)]
    for payload in payloads:
        ring.write_packet(VM_PKT_DATA_INBAND, payload, trans_id=len(payload))
        packet, _ = ring.read_packet()
        assert packet.payload[:len(payload)] == payload and packet.trans_id == len(payload)
    assert ring.read_packet() == (None, False)


def test_one_byte_stays_free_and_a_full_ring_refuses():
    _, ring = make_ring()
    body = DATA // 2 - 16 - 8                # two of these would fill the ring exactly
    ring.write_packet(VM_PKT_DATA_INBAND, bytes(body))
    with pytest.raises(RingFull, match="needed"):
        ring.write_packet(VM_PKT_DATA_INBAND, bytes(body))
    with pytest.raises(PacketTooLarge, match="can never fit"):
        ring.write_packet(VM_PKT_DATA_INBAND, bytes(DATA))


def test_reader_signals_writer_when_free_space_crosses_pending_send_sz():
    _, ring = make_ring()
    for _ in range(3):
        ring.write_packet(VM_PKT_COMP, bytes(1000))
    ring.pending_send_sz = 3000              # the writer waits for 3000 free bytes
    assert ring.bytes_to_write() == 1024      # 3 packets of 1000 + 16 + 8 bytes
    assert ring.read_packet()[1] is False    # still not enough
    assert ring.read_packet()[1] is True     # crossed
    assert ring.read_packet()[1] is False    # already past: no second signal


@pytest.mark.parametrize("offset, value, reason", [
    (vmbus.WRITE_INDEX, DATA, "index_out_of_range"),
    (vmbus.READ_INDEX, 0xFFFFFFF8, "index_out_of_range"),
    (vmbus.WRITE_INDEX, 12, "index_misaligned"),
])
def test_corrupt_indices_are_refused(offset, value, reason):
    ram, ring = make_ring()
    struct.pack_into("<I", ram, offset, value)
    with pytest.raises(RingCorrupt) as error:
        ring.read_packet()
    assert error.value.reason == reason


@pytest.mark.parametrize("descriptor, reason", [
    ((6, 2, 0x200, 0, 0), "oversized_packet"),     # claims 4 KiB in a 32-byte packet
    ((6, 1, 3, 0, 0), "bad_offset8"),             # data inside the descriptor
    ((6, 4, 3, 0, 0), "bad_offset8"),             # data beyond the packet
    ((6, 2, 1, 0, 0), "bad_len8"),
    ((99, 2, 3, 0, 0), "bad_packet_type"),
])
def test_inconsistent_descriptors_are_refused_without_consuming(descriptor, reason):
    ram, ring = make_ring()
    ring.write_packet(VM_PKT_DATA_INBAND, b"payload")
    struct.pack_into("<HHHHQ", ram, PAGE_SIZE, *descriptor)
    with pytest.raises(RingCorrupt) as error:
        ring.read_packet()
    assert error.value.reason == reason
    assert u32(ram, vmbus.READ_INDEX) == 0


def test_a_ring_needs_a_header_and_whole_data_pages():
    with pytest.raises(RingError, match="header page"):
        RingBuffer(bytearray(PAGE_SIZE + 100))
