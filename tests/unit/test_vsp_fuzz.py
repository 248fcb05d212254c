"""A malicious child against the VMBus server: each attack is rejected, counted and survived, and
seeded fuzzing (random messages, random ring states, random packets) never raises out of the
server nor touches a page of the child's RAM that no GPADL granted."""
from __future__ import annotations

import random
import struct

import pytest

from hypervisors.micro.parent import gpadl
from hypervisors.micro.parent import vmbus_messages as msg
from hypervisors.micro.parent import vsp
from hypervisors.micro.parent.gpadl import PAGE_SIZE
from hypervisors.micro.parent.vmbus import DESCRIPTOR, VM_PKT_DATA_INBAND
from test_vsp import RAM_PAGES, RING_PFN, RING_PAGES, Child

CANARY = b"\xa5"
GREETING = struct.pack("<I4x", 2) + b"ok"


@pytest.fixture
def mapped(monkeypatch):
    """Every (offset, length) GrantedMemory maps from now on (request it after ``victim``)."""
    offsets: list[tuple[int, int]] = []
    real_mmap = gpadl.mmap.mmap

    def recording_mmap(fd, length, *args, offset=0, **kwargs):
        offsets.append((offset, length))
        return real_mmap(fd, length, *args, offset=offset, **kwargs)

    monkeypatch.setattr(gpadl.mmap, "mmap", recording_mmap)
    return offsets


@pytest.fixture
def victim(disk_path):
    child = Child(str(disk_path))
    child.ram[:] = CANARY * len(child.ram)
    child.connect()
    outbound, inbound = child.open(vsp.CONSOLE_RELID)
    yield child, outbound, inbound
    child.server.close()


@pytest.fixture
def disk_path(tmp_path):
    path = tmp_path / "disk.img"
    path.write_bytes(bytes(16 * vsp.SECTOR_SIZE))
    return path


def still_serves(child: Child, outbound) -> bool:
    """A good packet after the attack still reaches the console."""
    outbound.initialise()
    child.console.clear()
    child.request(vsp.CONSOLE_RELID, outbound, GREETING, 1, flags=0)
    return bytes(child.console) == b"ok"


def outside_rings_untouched(child: Child) -> bool:
    ring = slice(RING_PFN * PAGE_SIZE, (RING_PFN + RING_PAGES) * PAGE_SIZE)
    outside = child.ram[:ring.start] + child.ram[ring.stop:]
    return outside == CANARY * len(outside)


@pytest.mark.parametrize("offset, value, reason", [
    (0, 3 * PAGE_SIZE, "index_out_of_range"),       # write_index past a 2-page data area
    (0, 20, "index_misaligned"),
    (4, 0x7FFFFFF0, "index_out_of_range"),          # read_index
])
def test_corrupt_ring_indices(victim, offset, value, reason):
    child, outbound, _ = victim
    outbound.write_packet(VM_PKT_DATA_INBAND, GREETING)
    start = RING_PFN * PAGE_SIZE + offset
    child.ram[start:start + 4] = struct.pack("<I", value)
    child.server.on_signal_event(vsp.CONSOLE_RELID, 0)
    assert child.server.stats.rejected[reason] == 1
    assert still_serves(child, outbound) and outside_rings_untouched(child)


@pytest.mark.parametrize("descriptor, reason", [
    ((6, 2, 0xFFFF, 1, 0), "oversized_packet"),
    ((6, 3, 2, 1, 0), "bad_offset8"),
    ((6, 0, 3, 1, 0), "bad_offset8"),
])
def test_inconsistent_descriptors(victim, descriptor, reason):
    child, outbound, _ = victim
    outbound.write_packet(VM_PKT_DATA_INBAND, GREETING)
    start = (RING_PFN + 1) * PAGE_SIZE
    child.ram[start:start + DESCRIPTOR.size] = DESCRIPTOR.pack(*descriptor)
    child.server.on_signal_event(vsp.CONSOLE_RELID, 0)
    assert child.server.stats.rejected[reason] == 1 and child.console == b""
    assert still_serves(child, outbound)


def test_gpadls_outside_ram_and_unknown_relids(victim, mapped):
    child, outbound, _ = victim
    before = len(mapped)
    assert child.send(msg.GpadlHeader(0x12, 0x300, 2 * PAGE_SIZE, 0, 2, (5, RAM_PAGES))) == [
        msg.GpadlCreated(0x12, 0x300, vsp.STATUS_UNSUCCESSFUL)]
    assert child.send(msg.GpadlHeader(0x12, 0x301, PAGE_SIZE, 0, 1, (RING_PFN,))) == [
        msg.GpadlCreated(0x12, 0x301, vsp.STATUS_UNSUCCESSFUL)]       # already granted
    assert child.send(msg.OpenChannel(0x99, 1, 0x100, 0, 3)) == []
    assert child.send(msg.OpenChannel(0x12, 1, 0x100, 0, 3)) == [      # someone else's GPADL
        msg.OpenChannelResult(0x12, 1, vsp.STATUS_UNSUCCESSFUL)]
    with pytest.raises(vsp.UnknownConnection, match="no such connection"):
        child.server.on_signal_event(0x99, 0)
    with pytest.raises(vsp.UnknownConnection):
        child.server.on_post_message(7, 1, msg.RequestOffers().pack())
    rejected = child.server.stats.rejected
    assert (rejected["pfn_outside_ram"], rejected["overlapping_grant"], rejected["unknown_relid"],
            rejected["unknown_gpadl"], rejected["unknown_connection"]) == (1, 1, 1, 1, 2)
    assert len(mapped) == before and still_serves(child, outbound)


def test_a_flood_of_signals_is_counted_and_logged_sparingly(victim, caplog):
    child, outbound, _ = victim
    for _ in range(5000):
        child.server.on_signal_event(vsp.CONSOLE_RELID, 0)
    assert child.server.stats.rejected["spurious_signal"] == 5000
    assert len(caplog.records) == vsp.LOG_FIRST + 5
    assert still_serves(child, outbound)


def random_message(rng: random.Random) -> bytes:
    kind = rng.randrange(4)
    if kind == 0:
        return rng.randbytes(rng.randrange(0, 260))
    msgtype = rng.choice(list(msg.MESSAGES))
    body = struct.pack("<II", msgtype, 0) + rng.randbytes(rng.randrange(0, 232))
    if kind == 1:
        return body
    relid = rng.choice((0x11, 0x12, rng.getrandbits(32)))
    handle = rng.choice((0x100, 0x400 + rng.randrange(4), rng.getrandbits(32)))
    pages = rng.randrange(1, 30)
    pfns = tuple(rng.choice((rng.randrange(RAM_PAGES), rng.getrandbits(64)))
                 for _ in range(pages))
    if kind == 2:
        return msg.GpadlHeader(relid, handle, pages * PAGE_SIZE, 0, pages, pfns[:26]).pack()
    return msg.OpenChannel(relid, 1, handle, 0, rng.randrange(0, 8)).pack()


def test_fuzz_random_messages(victim, mapped):
    child, outbound, _ = victim
    rng = random.Random(4)
    for _ in range(3000):
        connection = rng.choice((1, 1, 1, 4, rng.getrandbits(32)))
        try:
            child.server.on_post_message(connection, rng.choice((1, 1, 1, 2)),
                                         random_message(rng))
        except vsp.UnknownConnection:
            assert connection not in vsp.MESSAGE_CONNECTIONS
    assert all(offset % PAGE_SIZE == 0 and length == PAGE_SIZE
               and offset < RAM_PAGES * PAGE_SIZE for offset, length in mapped)
    assert sum(child.server.stats.rejected.values()) > 1000


def test_fuzz_random_ring_states_and_packets(victim):
    child, outbound, inbound = victim
    rng = random.Random(5)
    ring_bytes = RING_PAGES * PAGE_SIZE
    base = RING_PFN * PAGE_SIZE
    for case in range(3000):
        if case % 3 == 0:                     # scribble over a ring header
            offset = base + rng.choice((0, 3 * PAGE_SIZE)) + rng.choice((0, 4, 8, 12))
            child.ram[offset:offset + 4] = struct.pack("<I", rng.choice(
                (rng.getrandbits(32), rng.randrange(0, 2 * PAGE_SIZE, 8))))
        elif case % 3 == 1:                   # random bytes anywhere in the ring pages
            offset = base + rng.randrange(ring_bytes - 64)
            child.ram[offset:offset + 64] = rng.randbytes(64)
        else:                                 # a random packet, maybe through a fresh ring
            if rng.random() < 0.3:
                outbound.initialise(), inbound.initialise()
            data = rng.randbytes(rng.randrange(0, 300))
            payload = rng.choice((data, struct.pack("<I4x", len(data)) + data))
            try:
                outbound.write_packet(rng.choice((6, 9, 11, 1)), payload, case, rng.getrandbits(1))
            except ValueError:
                pass                          # the child's own view of a corrupt ring
        child.server.on_signal_event(vsp.CONSOLE_RELID, 0)
    assert outside_rings_untouched(child)
    assert child.server.stats.signals == 3000
    assert len(child.console) > 5000 and child.server.stats.rejected["bad_packet_type"] > 100
    assert still_serves(child, outbound)
