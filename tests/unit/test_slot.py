"""The shared-memory channel (hypervisors/micro/slot.py) between a ParentChannel and a parent's
PartitionWorker, both ends in this process, in each mode (sleep: both ends on one CPU; poll: on
two): requests and replies through the slot, notifications that overflow a reply arriving whole
and in order through DRAINs, a peer's death seen as the end of the channel, each end's thread on
the CPU the slot names (the parent's beside the hypervisor's once its poll window has closed), a
poll window that closes while the channel idles, and slots the parent must refuse."""
from __future__ import annotations

import fcntl
import os
import socket
import threading
import time

import pytest

from emu.memory import GuestMemory
from hypervisors.micro.parent.root import PartitionWorker
from hypervisors.micro.proxy import ALL_ONES, ParentChannel
from hypervisors.micro.slot import (
    HYPERVISOR_CPU,
    PARENT_BESIDE,
    PARENT_SLEEPS,
    POLL,
    POLL_MAX_SECONDS,
    SLEEP,
    SLOT_SIZE,
    Side,
    SlotEnd,
    check_slot,
    create_slot,
    placement,
    slot_mode,
)
from hypervisors.micro.wire import MAX_PAYLOAD, Op, PartitionConfig, Record
from vmm.clock import VirtualClock

POST_CODE = 0x80     # the board's POST null device: reads 0, counts reads
DEBUG_CONSOLE = 0xE9


class Pair:
    """A hypervisor-side ParentChannel served by a PartitionWorker thread over one slot."""

    def __init__(self, tmp_path, mode: int):
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        allowed = sorted(os.sched_getaffinity(0))
        if mode == POLL and len(allowed) < 2:
            pytest.skip("poll mode needs two CPUs")
        hypervisor_cpu, parent_cpu = allowed[1 % len(allowed)], allowed[0]
        self.cpus = (hypervisor_cpu, parent_cpu if mode == POLL else hypervisor_cpu)
        slot = create_slot(mode, *self.cpus)
        to_parent, to_us = os.eventfd(0, os.EFD_CLOEXEC), os.eventfd(0, os.EFD_CLOEXEC)
        parent_end = SlotEnd(Side.PARENT, os.dup(slot), os.dup(to_us), os.dup(to_parent), theirs)
        self.ram = GuestMemory(1 << 20)
        disk = tmp_path / "disk.img"
        disk.write_bytes(bytes(1 << 16))
        self.worker = PartitionWorker(1, parent_end, os.dup(self.ram.fd),
                                      PartitionConfig(1 << 20, b"", str(disk), ""))
        self.thread = threading.Thread(target=self.worker.serve, daemon=True)
        self.thread.start()
        self.records, self.lost = [], []
        self.channel = ParentChannel(SlotEnd(Side.HYPERVISOR, slot, to_parent, to_us, ours),
                                     VirtualClock(), self.records.append, self.lost.append,
                                     lambda state: None, lambda levels, rises: None)

    def close(self) -> None:
        self.channel.close()
        self.thread.join(timeout=10)
        self.ram.close()


@pytest.fixture(params=[SLEEP, POLL], ids=["sleep", "poll"])
def pair(tmp_path, request):
    channel = Pair(tmp_path, request.param)
    yield channel
    channel.close()


def test_a_port_access_is_answered_with_the_device_output_first(pair):
    assert pair.channel.call(Op.IO_READ, 1, POST_CODE) == 0
    assert pair.worker.board.post.reads == 1
    pair.channel.call(Op.IO_WRITE, 1, DEBUG_CONSOLE, ord("A"))
    assert [(r.op, r.payload) for r in pair.records] == [(Record.OUTPUT, b"A")]
    assert pair.channel.round_trips == 2 and not pair.lost


def test_notifications_larger_than_a_reply_arrive_whole_and_in_order(pair):
    chunks = [bytes([n]) * (MAX_PAYLOAD - 7) for n in range(1, 4)]
    for chunk in chunks:
        pair.worker.console(chunk)
    assert pair.channel.call(Op.IO_READ, 1, 0x1234) == 0xFF   # unclaimed: all-ones
    assert b"".join(r.payload for r in pair.records) == b"".join(chunks)
    assert all(r.op == Record.OUTPUT and len(r.payload) <= MAX_PAYLOAD for r in pair.records)
    assert pair.channel.round_trips >= len(chunks)   # the first reply, then DRAINs
    assert not pair.lost


def test_a_dead_peer_ends_the_channel_and_every_later_call_answers_all_ones(pair):
    pair.worker.link.liveness.shutdown(socket.SHUT_RDWR)   # as the parent's exit closes it
    pair.thread.join(timeout=10)                          # the worker saw it too and let go
    assert not pair.thread.is_alive()
    assert pair.channel.call(Op.IO_READ, 1, POST_CODE) == ALL_ONES
    assert pair.lost and "stopped answering" in pair.lost[0]
    assert pair.channel.call(Op.IO_READ, 1, POST_CODE) == ALL_ONES and len(pair.lost) == 1


def worker_asleep(pair) -> set[int]:
    """The worker's CPUs once it sleeps (it moves, if at all, before it sleeps)."""
    deadline = time.monotonic() + 10
    while not pair.worker.link.words[PARENT_SLEEPS] and time.monotonic() < deadline:
        time.sleep(0.001)
    return os.sched_getaffinity(pair.thread.native_id)


def test_each_end_runs_on_the_cpu_the_slot_names_for_it(pair):
    hypervisor_cpu, parent_cpu = pair.cpus
    before = os.sched_getaffinity(0)
    pair.channel.call(Op.IO_READ, 1, POST_CODE)             # the worker is serving by now
    cpus = worker_asleep(pair)
    beside = pair.worker.link.words[PARENT_BESIDE]     # it moved, if at all, before it slept
    assert cpus == {hypervisor_cpu if beside else parent_cpu}
    with pair.channel.link.pinned():
        assert os.sched_getaffinity(0) == {hypervisor_cpu}
    assert os.sched_getaffinity(0) == before
    assert (hypervisor_cpu == parent_cpu) == (not pair.channel.link.polling)


def test_a_cpu_number_that_cannot_be_had_leaves_the_thread_where_it_was(pair):
    before = os.sched_getaffinity(0)
    pair.channel.link.words[HYPERVISOR_CPU] = 0xFFFFFFFF
    assert pair.channel.link.pin() is None and os.sched_getaffinity(0) == before


def test_an_idle_channel_stops_polling_and_a_sleeping_end_is_still_woken(pair):
    worker = pair.worker.link
    pair.channel.call(Op.IO_READ, 1, POST_CODE)            # the worker is serving by now
    slept = worker.sleeps
    for _ in range(6):          # each wait is longer than any poll: the window closes
        time.sleep(20 * POLL_MAX_SECONDS)
        assert pair.channel.call(Op.IO_READ, 1, POST_CODE) == 0
    assert worker.window == 0 and worker.sleeps == slept + 6
    assert pair.worker.board.post.reads == 7
    assert worker_asleep(pair) == {pair.cpus[0]}      # beside the hypervisor's thread
    assert worker.words[PARENT_BESIDE] == worker.polling


def test_the_ends_poll_on_two_cpus_of_an_idle_machine_and_share_one_otherwise(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(os, "getloadavg", lambda: (0.5, 0.5, 0.5))
    assert [placement(n) for n in (1, 2)] == [(POLL, 1, 0), (POLL, 0, 1)]
    monkeypatch.setattr(os, "getloadavg", lambda: (6.0, 5.0, 4.0))
    assert [placement(n) for n in (1, 2)] == [(SLEEP, 1, 1), (SLEEP, 0, 0)]
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {1})
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    assert placement(1) == (SLEEP, 1, 1)


def test_the_parent_refuses_a_slot_it_could_be_made_to_fault_on():
    unsealed = os.memfd_create("unsealed", os.MFD_ALLOW_SEALING)
    os.ftruncate(unsealed, SLOT_SIZE)
    short = os.memfd_create("short", os.MFD_ALLOW_SEALING)
    os.ftruncate(short, SLOT_SIZE - 4096)
    fcntl.fcntl(short, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW)
    good = create_slot()
    bad_mode = create_slot(mode=7)
    try:
        with pytest.raises(ValueError, match="not sealed"):
            check_slot(unsealed)
        with pytest.raises(ValueError, match=f"not {SLOT_SIZE} bytes"):
            check_slot(short)
        check_slot(good)
        assert slot_mode(good) == SLEEP
        with pytest.raises(ValueError, match="mode 7 is neither sleep"):
            slot_mode(bad_mode)
    finally:
        for fd in (unsealed, short, good, bad_mode):
            os.close(fd)
