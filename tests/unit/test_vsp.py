"""The VMBus server and its VSPs (hypervisors/micro/parent/vsp.py), driven by a child played in Python
over memfd-backed RAM with the same layouts the assembly guests use (guests/vmbus.inc)."""
from __future__ import annotations

import mmap
import os
import struct

import pytest

from hypervisors.micro.parent import vmbus_messages as msg
from hypervisors.micro.parent import vsp
from hypervisors.micro.parent.gpadl import PAGE_SIZE, GrantedMemory
from hypervisors.micro.parent.vmbus import VM_PKT_COMP, VM_PKT_DATA_INBAND, RingBuffer

RAM_PAGES = 64
RING_PFN = 0x30                  # outbound ring 0x30-0x32, inbound ring 0x33-0x35
RING_PAGES, SPLIT = 6, 3


class Child:
    """A well-behaved enlightened child, in Python: it owns RAM and the client side of VMBus."""

    def __init__(self, disk: str | None = None, partition_id: int = 1):
        self.fd = os.memfd_create(f"child-{partition_id}")
        os.ftruncate(self.fd, RAM_PAGES * PAGE_SIZE)
        self.ram = mmap.mmap(self.fd, RAM_PAGES * PAGE_SIZE)
        self.inbox: list[tuple[int, msg.Message]] = []
        self.signals: list[int] = []
        self.console = bytearray()
        self.server = vsp.VmbusServer(partition_id, GrantedMemory(self.fd, len(self.ram)),
                                      self._posted, self.signals.append, disk,
                                      self.console.extend)

    def _posted(self, sint: int, message_type: int, payload: bytes) -> None:
        assert message_type == msg.VMBUS_MESSAGE_TYPE and len(payload) <= 240
        self.inbox.append((sint, msg.parse(payload)))

    def send(self, message: msg.Message, connection_id: int = 1) -> list[msg.Message]:
        """Post one message; returns what the server posted back."""
        self.inbox.clear()
        self.server.on_post_message(connection_id, msg.VMBUS_MESSAGE_TYPE, message.pack())
        return [message for _, message in self.inbox]

    def connect(self) -> list[msg.Message]:
        assert self.send(msg.InitiateContact(msg.VERSION_WIN10)) == [
            msg.VersionResponse(1, 0, 0, msg.VMBUS_MESSAGE_CONNECTION_ID)]
        return self.send(msg.RequestOffers())

    def rings(self, pfn: int = RING_PFN) -> tuple[RingBuffer, RingBuffer]:
        view = memoryview(self.ram)
        base, split = pfn * PAGE_SIZE, (pfn + SPLIT) * PAGE_SIZE
        return (RingBuffer(view[base:split]),
                RingBuffer(view[split:base + RING_PAGES * PAGE_SIZE]))

    def open(self, relid: int, gpadl: int = 0x100, pfn: int = RING_PFN):
        """GPADL for a ring pair, then OPENCHANNEL; returns (outbound, inbound) guest rings."""
        outbound, inbound = self.rings(pfn)
        outbound.initialise(), inbound.initialise()
        pfns = tuple(range(pfn, pfn + RING_PAGES))
        assert self.send(msg.GpadlHeader(relid, gpadl, RING_PAGES * PAGE_SIZE, 0, RING_PAGES,
                                         pfns)) == [msg.GpadlCreated(relid, gpadl, 0)]
        assert self.send(msg.OpenChannel(relid, relid, gpadl, 0, SPLIT)) == [
            msg.OpenChannelResult(relid, relid, 0)]
        return outbound, inbound

    def request(self, relid: int, outbound: RingBuffer, payload: bytes, trans_id: int,
                flags: int = 1) -> None:
        if outbound.write_packet(VM_PKT_DATA_INBAND, payload, trans_id, flags):
            self.server.on_signal_event(relid, 0)


@pytest.fixture
def child():
    child = Child()
    yield child
    child.server.close()


@pytest.fixture
def disk(tmp_path):
    path = tmp_path / "disk.img"
    path.write_bytes(bytes(64 * vsp.SECTOR_SIZE))
    return path


def test_offers_carry_class_and_instance_guids(child):
    offers = child.connect()
    assert offers == [
        msg.OfferChannel(vsp.CONSOLE_CLASS, vsp.CONSOLE_INSTANCE, 0x11, 0x11),
        msg.OfferChannel(vsp.BLOCK_CLASS, vsp.BLOCK_INSTANCE, 0x12, 0x12),
        msg.AllOffersDelivered()]
    assert {sint for sint, _ in child.inbox} == {msg.VMBUS_MESSAGE_SINT}


def test_version_negotiation_refuses_unknown_and_switches_connection_id_on_v5(child):
    assert child.send(msg.InitiateContact(0x70000)) == [msg.VersionResponse(0)]
    assert child.server.stats.rejected["unsupported_version"] == 1
    reply = child.send(msg.InitiateContact(msg.VERSION_WIN10_V5, interrupt_page=2), 4)
    assert reply == [msg.VersionResponse(1, 0, 0, msg.VMBUS_MESSAGE_CONNECTION_ID_4)]


def test_console_batches_reach_the_console_and_complete(child):
    child.connect()
    outbound, inbound = child.open(vsp.CONSOLE_RELID)
    text = b"Hello over VMBus! " * 20
    for trans_id, start in enumerate(range(0, len(text), 64), 1):
        chunk = text[start:start + 64]
        child.request(vsp.CONSOLE_RELID, outbound, struct.pack("<I4x", len(chunk)) + chunk,
                      trans_id, flags=int(start + 64 >= len(text)))
    assert bytes(child.console) == text
    packet, _ = inbound.read_packet()
    assert packet.type == VM_PKT_COMP and packet.trans_id == 6
    assert struct.unpack_from("<II", packet.payload) == (0, len(text) - 320)
    assert child.signals == [vsp.CONSOLE_RELID] and inbound.read_packet() == (None, False)
    assert child.server.stats.packets == 6


def block_request(op: int, sector: int, count: int, data: bytes = b"") -> bytes:
    return vsp.BLOCK_REQUEST.pack(op, count, sector) + data


def test_block_writes_and_reads_sectors_of_the_parents_image(disk):
    child = Child(str(disk))
    child.connect()
    outbound, inbound = child.open(vsp.BLOCK_RELID)
    pattern = bytes((i * 7) & 0xFF for i in range(4 * 512))
    child.request(vsp.BLOCK_RELID, outbound, block_request(vsp.BLOCK_OP_WRITE, 8, 4, pattern), 1)
    child.request(vsp.BLOCK_RELID, outbound, block_request(vsp.BLOCK_OP_READ, 8, 4), 2)
    child.request(vsp.BLOCK_RELID, outbound, block_request(vsp.BLOCK_OP_READ, 63, 2), 3)
    child.request(vsp.BLOCK_RELID, outbound, block_request(vsp.BLOCK_OP_GET_CAPACITY, 0, 0), 4)
    replies = [inbound.read_packet()[0] for _ in range(4)]
    assert [vsp.BLOCK_REPLY.unpack_from(r.payload) for r in replies] == [
        (0, 4, 8), (0, 4, 8), (vsp.BLOCK_S_OUT_OF_RANGE, 2, 63), (0, 0, 64)]
    assert replies[1].payload[16:16 + len(pattern)] == pattern
    child.server.close()
    assert disk.read_bytes()[8 * 512:12 * 512] == pattern


def test_block_without_a_disk_answers_no_media(child):
    child.connect()
    outbound, inbound = child.open(vsp.BLOCK_RELID)
    child.request(vsp.BLOCK_RELID, outbound, block_request(vsp.BLOCK_OP_READ, 0, 1), 9)
    reply = inbound.read_packet()[0]
    assert vsp.BLOCK_REPLY.unpack_from(reply.payload)[0] == vsp.BLOCK_S_NO_MEDIA


def test_a_gpadl_split_over_header_and_body_messages(child):
    child.connect()
    pfns = tuple(range(8, 8 + 40))          # 26 PFNs fit the header, 14 go in a body
    first = msg.GpadlHeader(0x11, 0x200, 40 * PAGE_SIZE, 0, 40, pfns[:26])
    assert len(first.pack()) <= 240 and child.send(first) == []
    assert child.send(msg.GpadlBody(1, 0x200, pfns[26:])) == [msg.GpadlCreated(0x11, 0x200, 0)]
    assert child.server.memory.views[0x200].pfns == pfns


def test_close_teardown_and_unload(child):
    child.connect()
    child.open(vsp.CONSOLE_RELID)
    assert child.send(msg.GpadlTeardown(0x11, 0x100)) == []
    assert child.server.stats.rejected["gpadl_in_use"] == 1
    child.send(msg.CloseChannel(0x11))
    assert child.send(msg.GpadlTeardown(0x11, 0x100)) == [msg.GpadlTorndown(0x100)]
    assert child.server.memory.views == {}
    child.open(vsp.CONSOLE_RELID, gpadl=0x101)
    assert child.send(msg.Unload()) == [msg.UnloadResponse()]
    assert child.server.channels == {} and child.server.memory.views == {}


def test_children_are_independent(disk):
    first, second = Child(str(disk), 1), Child(None, 2)
    first.connect()
    out, _ = first.open(vsp.CONSOLE_RELID)
    second.send(msg.RequestOffers())
    first.request(0x11, out, struct.pack("<I4x", 2) + b"hi", 1)
    assert first.console == b"hi" and second.console == b""
    assert second.server.stats.rejected == {"not_connected": 1}
    assert first.server.stats.rejected == {}
