"""The shared-memory slot a child partition's channel runs on (the request/reply page pair and
doorbell of a virtio queue or Hyper-V's intercept message page, without a kernel driver).

One sealed memfd, mapped by both processes, holds a request area and a reply area. A request is
one wire record (wire.py) written into the request area, then its length and the next sequence
number; the answer is the parent's records (notifications, then one REPLY) written into the reply
area, then their length and the request's sequence number. Each direction has an eventfd
doorbell that is rung after every publication. The waiting side polls the sequence number for
up to SPIN_SECONDS, then sleeps in poll() on its doorbell *and* the partition's stream socket,
which carries no record but stays open while the peer lives: its EOF is the peer's death. After
a spin that failed (the peer was not running meanwhile: all cores busy, or both ends on one
core) the next 1, 2, 4 ... 1024 waits sleep at once; a spin that succeeds resets that. No record
is framed on a socket; the socket and the doorbells are never read on the spin path.

Stores are published in program order (the sequence number last), which x86's total store order
keeps visible in that order to the other process; the doorbell system calls are full barriers.
"""
from __future__ import annotations

import contextlib
import ctypes
import enum
import fcntl
import mmap
import os
import select
import socket
import time

from hypervisors.micro.wire import HEADER, MAX_PAYLOAD, MalformedRecord

PAGE = 4096
WORDS = 32                       # u32 words of the slot header page the protocol uses
REQ_SEQ, REQ_LEN = 0, 1          # written by the hypervisor
CPU = 2                          # written by the hypervisor before the parent maps the slot
REP_SEQ, REP_LEN = 16, 17        # written by the parent (another cache line)
REQUEST_OFFSET = PAGE
REQUEST_CAPACITY = HEADER.size + MAX_PAYLOAD
REPLY_OFFSET = REQUEST_OFFSET + -(-REQUEST_CAPACITY // PAGE) * PAGE
REPLY_CAPACITY = MAX_PAYLOAD + PAGE  # the largest record, a REPLY and room to spare
SLOT_SIZE = REPLY_OFFSET + -(-REPLY_CAPACITY // PAGE) * PAGE
SPIN_SECONDS = 20e-6   # how long a waiter polls the sequence number before it sleeps
MAX_BACKOFF = 1024     # at most this many waits sleep at once after a spin that failed
SIZE_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW


class PeerGone(EOFError):
    """The other process closed the partition's socket (it died, or it ended the channel)."""


class Side(enum.Enum):
    """Which process an end belongs to: (words it publishes, area it writes, area it reads)."""
    HYPERVISOR = (REQ_SEQ, REQ_LEN, REQUEST_OFFSET, REPLY_OFFSET, REPLY_CAPACITY)
    PARENT = (REP_SEQ, REP_LEN, REPLY_OFFSET, REQUEST_OFFSET, REQUEST_CAPACITY)


def create_slot(cpu: int = 0) -> int:
    """A zeroed slot memfd whose size can no longer change (so no peer can make the other's
    mapping fault by truncating it), naming the CPU both ends' threads run on."""
    fd = os.memfd_create("trapvisor-channel", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, SLOT_SIZE)
    fcntl.fcntl(fd, fcntl.F_ADD_SEALS, SIZE_SEALS)
    os.pwrite(fd, cpu.to_bytes(4, "little"), 4 * CPU)
    return fd


def cpu_for(partition_id: int) -> int:
    """The CPU a partition's vCPU thread and its parent worker share: the allowed CPUs in turn."""
    allowed = sorted(os.sched_getaffinity(0))
    return allowed[partition_id % len(allowed)]


def check_slot(fd: int) -> None:
    """ValueError unless ``fd`` is a slot of the right size that nobody can shrink."""
    if os.fstat(fd).st_size != SLOT_SIZE:
        raise ValueError(f"the channel slot is not {SLOT_SIZE} bytes")
    if fcntl.fcntl(fd, fcntl.F_GET_SEALS) & SIZE_SEALS != SIZE_SEALS:
        raise ValueError("the channel slot's size is not sealed")


class SlotEnd:
    """One process's end of a channel: the mapping, the doorbell it rings (``ring_fd``), the
    one it sleeps on (``wait_fd``) and the partition's socket (``liveness``). It owns them all."""

    def __init__(self, side: Side, slot_fd: int, ring_fd: int, wait_fd: int,
                 liveness: socket.socket):
        self.seq_word, self.len_word, out, into, capacity = side.value
        self.out_offset, self.in_offset, self.in_capacity = out, into, capacity
        self.map = mmap.mmap(slot_fd, SLOT_SIZE, flags=mmap.MAP_SHARED)
        os.close(slot_fd)
        self.words = (ctypes.c_uint32 * WORDS).from_buffer(self.map)
        self.ring_fd, self.wait_fd, self.liveness = ring_fd, wait_fd, liveness
        self.poller = select.poll()
        self.poller.register(wait_fd, select.POLLIN)
        self.poller.register(liveness, select.POLLIN)
        self.peer_gone = False
        self.skip, self.backoff = 0, 1   # waits to sleep through before the next spin

    def pin(self) -> set[int] | None:
        """Run the calling thread on the slot's CPU, where the other end's thread runs too, so
        that each hand-off wakes a thread on the same core (a wake-up on another core costs an
        inter-processor interrupt, tens of µs in a VM); the previous affinity, or None if the
        CPU cannot be had (not allowed here, or a number a hostile peer wrote)."""
        try:
            before = os.sched_getaffinity(0)
            os.sched_setaffinity(0, {self.words[CPU]})
        except (OSError, ValueError, OverflowError):
            return None
        return before

    @contextlib.contextmanager
    def pinned(self):
        """The calling thread on the slot's CPU for the block, then back where it was."""
        before = self.pin()
        try:
            yield
        finally:
            if before is not None:
                os.sched_setaffinity(0, before)

    def publish(self, seq: int, length: int) -> None:
        """The outgoing area holds ``length`` bytes: make them visible, then ring."""
        words = self.words
        words[self.len_word] = length
        words[self.seq_word] = seq
        os.eventfd_write(self.ring_fd, 1)

    def wait_for(self, word: int, seq: int, timeout: float | None = None) -> None:
        """Return once ``word`` holds ``seq``; PeerGone if the peer closed its socket first,
        TimeoutError if ``timeout`` seconds of sleep pass without it."""
        words = self.words
        if self._spin_due():
            until = time.perf_counter() + SPIN_SECONDS
            while time.perf_counter() < until:
                if words[word] == seq:
                    self.backoff = 1
                    return
            self._spin_failed()
        while words[word] != seq:
            self._sleep(timeout)

    def wait_for_change(self, word: int, seen: int) -> int:
        """Return ``word``'s new value once it differs from ``seen``; PeerGone as above."""
        words = self.words
        if self._spin_due():
            until = time.perf_counter() + SPIN_SECONDS
            while time.perf_counter() < until:
                if words[word] != seen:
                    self.backoff = 1
                    return words[word]
            self._spin_failed()
        while words[word] == seen:
            self._sleep()
        return words[word]

    def _spin_due(self) -> bool:
        if self.skip:
            self.skip -= 1
            return False
        return True

    def _spin_failed(self) -> None:
        """Sleep through the next ``backoff`` waits before spinning again (doubling up to
        MAX_BACKOFF): a peer that is not running while we spin costs little."""
        self.skip, self.backoff = self.backoff, min(2 * self.backoff, MAX_BACKOFF)

    def _sleep(self, timeout: float | None = None) -> None:
        """Sleep until the doorbell rings; PeerGone once the socket said so on an earlier sleep
        (the caller looks at the slot once more in between: the last answer may be there)."""
        if self.peer_gone:
            raise PeerGone("the peer closed the channel or broke its protocol")
        events = self.poller.poll(None if timeout is None else timeout * 1000)
        if not events:
            raise TimeoutError(f"no answer within {timeout} s")
        for fd, _events in events:
            if fd == self.wait_fd:
                os.eventfd_read(fd)
            elif fd == self.liveness.fileno():
                self.peer_gone = not self._peer_alive()

    def _peer_alive(self) -> bool:
        """The socket carries nothing: readable means EOF, or bytes no peer sends (either way
        the channel is over)."""
        try:
            self.liveness.recv(1, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return True
        except OSError:
            pass
        return False

    def incoming(self, word: int) -> tuple[int, int]:
        """(start, end) in ``map`` of what the peer published; MalformedRecord if its length
        does not fit the area."""
        length = self.words[word]
        if length > self.in_capacity:
            raise MalformedRecord(f"a {length}-byte message overflows its "
                                  f"{self.in_capacity}-byte area")
        return self.in_offset, self.in_offset + length

    def close(self) -> None:
        del self.words
        self.poller.unregister(self.wait_fd)
        self.map.close()
        for fd in (self.ring_fd, self.wait_fd):
            os.close(fd)
        self.liveness.close()
