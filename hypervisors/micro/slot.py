"""The shared-memory slot a child partition's channel runs on (the request/reply page pair and
doorbell of a virtio queue or Hyper-V's intercept message page, without a kernel driver).

One sealed memfd, mapped by both processes, holds a request area and a reply area. A request is
one wire record (wire.py) written into the request area, then its length and the next sequence
number; the answer is the parent's records (notifications, then one REPLY) written into the reply
area, then their length and the request's sequence number. Each direction has an eventfd
doorbell. A sleeping waiter sleeps in poll() on its doorbell *and* the partition's stream
socket, which carries no record but stays open while the peer lives: its EOF is the peer's
death. No record is framed on a socket.

The hypervisor chooses the slot's mode when it creates it (``placement``) and writes it, with
the CPU each end's thread runs on, into the slot's header page:

- POLL (two or more CPUs allowed, and a machine that is not busy): while the channel is busy the two ends run on different
  CPUs and a waiter first polls the sequence number, for a window it adapts as KVM's halt
  polling does (kvm_vcpu_halt: a wait that slept but would have been caught by a longer poll
  doubles the window, up to POLL_MAX_SECONDS; a wait longer than that halves it, down to
  nothing), so a busy channel has no system call and no wake-up per message and an idle one
  burns no CPU. While the machine is contended (/proc/loadavg counts more runnable tasks than
  CPUs) the window grows no further than POLL_START_SECONDS (KVM stops polling altogether
  when another task wants the CPU, single_task_running): the CPU time a poller takes from others they take
  back from its peer or from the vCPU (measured: with 200 µs windows on a loaded machine a
  guest doing sparse I/O ran 3-4x slower than in-process, with 20 µs ~2x), while a busy
  channel's replies still come within a short poll. Once the parent's window has closed
  (requests come further apart than that), its worker sleeps *beside* the hypervisor's
  thread, on its CPU, and says so (PARENT_BESIDE):
  a wake-up on the same core is a local one, while one on another core costs an
  inter-processor interrupt and, on a loaded machine, waiting for a competitor's time slice;
  the hypervisor does not poll for a parent beside it. A waiter that goes to sleep says so in
  its own sleep word; a publisher rings only a peer that said so. The classic store-then-load
  race between the two (Dekker's: each side's store may still sit in its CPU's store buffer
  while it loads the other's word) is closed without a barrier on the fast path: a waiter
  sleeps at most until RECHECK_SECONDS after it said it sleeps, then looks at the sequence
  number again (store buffers drain in far less), so a publication that raced with the sleep
  is seen after at most that long; only later sleeps are unbounded.
- SLEEP (one CPU, or a busy machine): both ends' threads share the CPU, polling is useless (the peer cannot run
  while we poll), so every wait sleeps and every publication rings: a wake-up on the same core.

Stores are published in program order (the sequence number last), which x86's total store order
keeps visible in that order to the other process.
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
REQ_SEQ, REQ_LEN, HYPERVISOR_SLEEPS = 0, 1, 2    # written by the hypervisor
MODE, HYPERVISOR_CPU, PARENT_CPU = 3, 4, 5       # written before the parent maps the slot
REP_SEQ, REP_LEN, PARENT_SLEEPS, PARENT_BESIDE = 16, 17, 18, 19  # written by the parent
SLEEP, POLL = 0, 1               # the modes (MODE's values)
MODE_NAMES = {SLEEP: "sleep", POLL: "poll"}
REQUEST_OFFSET = PAGE
REQUEST_CAPACITY = HEADER.size + MAX_PAYLOAD
REPLY_OFFSET = REQUEST_OFFSET + -(-REQUEST_CAPACITY // PAGE) * PAGE
REPLY_CAPACITY = MAX_PAYLOAD + PAGE  # the largest record, a REPLY and room to spare
SLOT_SIZE = REPLY_OFFSET + -(-REPLY_CAPACITY // PAGE) * PAGE
POLL_START_SECONDS = 20e-6     # the window a poll-mode waiter starts with, and grows back from
POLL_MAX_SECONDS = 200e-6      # the longest poll; a longer wait shrinks the window
CHECKS = range(32)             # sequence-number reads between two looks at the clock
CONTENTION_PERIOD = 10e-3      # seconds between two looks at /proc/loadavg (one costs ~5 µs)
RECHECK_SECONDS = 1e-3         # a poll-mode sleeper looks again this long after it slept
SIZE_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW


class PeerGone(EOFError):
    """The other process closed the partition's socket (it died, or it ended the channel)."""


class Side(enum.Enum):
    """Which process an end belongs to: (sequence word, length word, sleep word it publishes,
    the peer's sleep word, its CPU word, area it writes, area it reads, that area's size)."""
    HYPERVISOR = (REQ_SEQ, REQ_LEN, HYPERVISOR_SLEEPS, PARENT_SLEEPS, HYPERVISOR_CPU,
                  REQUEST_OFFSET, REPLY_OFFSET, REPLY_CAPACITY)
    PARENT = (REP_SEQ, REP_LEN, PARENT_SLEEPS, HYPERVISOR_SLEEPS, PARENT_CPU,
              REPLY_OFFSET, REQUEST_OFFSET, REQUEST_CAPACITY)


def _open_loadavg() -> int | None:
    try:
        return os.open("/proc/loadavg", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None


def placement(partition_id: int) -> tuple[int, int, int]:
    """(mode, hypervisor CPU, parent CPU) for a partition: the allowed CPUs in turn; POLL, with
    the parent's worker on the next CPU so the two ends never share a core, where two or more
    CPUs are allowed and the machine is not busy (its 1-minute load average below its CPU
    count: on a busy machine polls lose their CPU and cross-core wake-ups wait for time
    slices; measured at load ~6 on 2 CPUs, a guest's UART console ran 3-4x slower in poll
    mode than in sleep mode)."""
    allowed = sorted(os.sched_getaffinity(0))
    cpu = allowed[partition_id % len(allowed)]
    if len(allowed) > 1 and os.getloadavg()[0] < os.cpu_count():
        return POLL, cpu, allowed[(partition_id + 1) % len(allowed)]
    return SLEEP, cpu, cpu


def create_slot(mode: int = SLEEP, hypervisor_cpu: int = 0, parent_cpu: int = 0) -> int:
    """A zeroed slot memfd whose size can no longer change (so no peer can make the other's
    mapping fault by truncating it), naming its mode and the CPU each end runs on."""
    fd = os.memfd_create("trapvisor-channel", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, SLOT_SIZE)
    fcntl.fcntl(fd, fcntl.F_ADD_SEALS, SIZE_SEALS)
    words = b"".join(n.to_bytes(4, "little") for n in (mode, hypervisor_cpu, parent_cpu))
    os.pwrite(fd, words, 4 * MODE)
    return fd


def check_slot(fd: int) -> None:
    """ValueError unless ``fd`` is a slot of the right size that nobody can shrink."""
    if os.fstat(fd).st_size != SLOT_SIZE:
        raise ValueError(f"the channel slot is not {SLOT_SIZE} bytes")
    if fcntl.fcntl(fd, fcntl.F_GET_SEALS) & SIZE_SEALS != SIZE_SEALS:
        raise ValueError("the channel slot's size is not sealed")


def slot_mode(fd: int) -> int:
    """The mode the slot names; ValueError if it is none."""
    mode = int.from_bytes(os.pread(fd, 4, 4 * MODE), "little")
    if mode not in MODE_NAMES:
        raise ValueError(f"the channel slot's mode {mode} is neither sleep (0) nor poll (1)")
    return mode


class SlotEnd:
    """One process's end of a channel: the mapping, the doorbell it rings (``ring_fd``), the
    one it sleeps on (``wait_fd``) and the partition's socket (``liveness``). It owns them all."""

    def __init__(self, side: Side, slot_fd: int, ring_fd: int, wait_fd: int,
                 liveness: socket.socket):
        self.polling = slot_mode(slot_fd) == POLL
        (self.seq_word, self.len_word, self.sleep_word, self.peer_sleep_word, self.cpu_word,
         self.out_offset, self.in_offset, self.in_capacity) = side.value
        self.map = mmap.mmap(slot_fd, SLOT_SIZE, flags=mmap.MAP_SHARED)
        os.close(slot_fd)
        self.words = (ctypes.c_uint32 * WORDS).from_buffer(self.map)
        self.ring_fd, self.wait_fd, self.liveness = ring_fd, wait_fd, liveness
        self.poller = select.poll()
        self.poller.register(wait_fd, select.POLLIN)
        self.poller.register(liveness, select.POLLIN)
        self.peer_gone = False
        self.window = POLL_START_SECONDS if self.polling else 0.0
        self.polls = self.sleeps = 0      # waits answered while polling, waits that slept
        self.beside = False               # the parent's worker: on the hypervisor's CPU
        self.loadavg = _open_loadavg()
        self.contention, self.next_sample = False, 0.0

    def describe(self) -> str:
        """The mode and the CPUs, for reports: 'poll (hypervisor on CPU 1, parent on CPU 0)'."""
        words = self.words
        return (f"{MODE_NAMES.get(words[MODE], words[MODE])} (hypervisor on CPU "
                f"{words[HYPERVISOR_CPU]}, parent on CPU {words[PARENT_CPU]})")

    def pin(self) -> set[int] | None:
        """Run the calling thread on this end's CPU (in SLEEP mode the other end's too, so that
        each hand-off wakes a thread on the same core: a wake-up on another core costs an
        inter-processor interrupt, tens of µs in a VM); the previous affinity, or None if the
        CPU cannot be had (not allowed here, or a number a hostile peer wrote)."""
        try:
            before = os.sched_getaffinity(0)
            os.sched_setaffinity(0, {self.words[self.cpu_word]})
        except (OSError, ValueError, OverflowError):
            return None
        return before

    @contextlib.contextmanager
    def pinned(self):
        """The calling thread on this end's CPU for the block, then back where it was."""
        before = self.pin()
        try:
            yield
        finally:
            if before is not None:
                os.sched_setaffinity(0, before)

    def publish(self, seq: int, length: int) -> None:
        """The outgoing area holds ``length`` bytes: make them visible, then ring the peer if
        it may be asleep."""
        words = self.words
        words[self.len_word] = length
        words[self.seq_word] = seq
        if words[self.peer_sleep_word] or not self.polling:
            os.eventfd_write(self.ring_fd, 1)

    def wait_for(self, word: int, seq: int, timeout: float | None = None) -> None:
        """Return once ``word`` holds ``seq``; PeerGone if the peer closed its socket first,
        TimeoutError if ``timeout`` seconds of sleep pass without it."""
        words = self.words
        window = 0.0 if words[PARENT_BESIDE] else self.window
        if window and self._poll(word, seq, False, window):
            return
        started = time.perf_counter()
        words[self.sleep_word] = 1
        recheck = started + RECHECK_SECONDS if self.polling else None
        try:
            while words[word] != seq:
                self._sleep(timeout, recheck)
        finally:
            self._slept(started, window)

    def wait_for_change(self, word: int, seen: int) -> int:
        """The parent's wait for a request: return ``word``'s new value once it differs from
        ``seen``; PeerGone as above. In poll mode the worker first moves beside the
        hypervisor's thread if its window has closed, or back to its own CPU if it opened."""
        words = self.words
        if self.polling and self.beside != (not self.window):
            self._move(not self.window)
        window = self.window
        if window and self._poll(word, seen, True, window):
            return words[word]
        started = time.perf_counter()
        words[self.sleep_word] = 1
        recheck = started + RECHECK_SECONDS if self.polling else None
        try:
            while words[word] == seen:
                self._sleep(None, recheck)
        finally:
            self._slept(started, window)
        return words[word]

    def _poll(self, word: int, value: int, changed: bool, window: float) -> bool:
        """Poll ``word`` for up to ``window`` seconds until it holds ``value`` (``changed``:
        until it no longer does); False when the window passed. A contended machine caps the
        window."""
        words = self.words
        last = time.perf_counter()
        until = last + window
        while True:
            for _ in CHECKS:
                if (words[word] != value) is changed:
                    self.polls += 1
                    if self._contended(last):
                        self.window = min(self.window, POLL_START_SECONDS)
                    return True
            last = time.perf_counter()
            if last >= until:
                return False

    def _move(self, beside: bool) -> None:
        """Run the calling thread on the hypervisor's CPU (``beside``) or on this end's own,
        and say where it runs; it stays put if the CPU cannot be had."""
        try:
            os.sched_setaffinity(0, {self.words[HYPERVISOR_CPU if beside else self.cpu_word]})
        except (OSError, ValueError, OverflowError):
            return
        self.beside = beside
        self.words[PARENT_BESIDE] = beside

    def _slept(self, started: float, polled: float) -> None:
        """Awake again after polling for ``polled`` seconds: adapt the poll window to how long
        the wait was (KVM's halt polling); a wait that did not poll for a parent beside us says
        nothing about the window."""
        self.words[self.sleep_word] = 0
        self.sleeps += 1
        if not self.polling or polled != self.window:
            return
        now = time.perf_counter()
        waited = polled + now - started
        if waited > POLL_MAX_SECONDS:
            self.window = self.window / 2 if self.window > POLL_START_SECONDS else 0.0
        elif self.window < POLL_MAX_SECONDS:
            most = POLL_START_SECONDS if self._contended(now) else POLL_MAX_SECONDS
            self.window = min(max(2 * self.window, POLL_START_SECONDS), most)

    def _contended(self, now: float) -> bool:
        """Whether a task waits for a CPU: more runnable tasks (/proc/loadavg's count, this
        thread and its peer among them) than the machine has CPUs (KVM's halt polling asks
        single_task_running for the same reason); looked at once per CONTENTION_PERIOD."""
        if now >= self.next_sample and self.loadavg is not None:
            self.next_sample = now + CONTENTION_PERIOD
            running = os.pread(self.loadavg, 64, 0).split()[3].split(b"/")[0]
            self.contention = int(running) > os.cpu_count()
        return self.contention

    def _sleep(self, timeout: float | None = None, recheck: float | None = None) -> None:
        """Sleep until the doorbell rings, or until the ``recheck`` time if that is sooner
        (the caller then looks at the slot again); PeerGone once the socket said so on an
        earlier sleep (the caller looks at the slot once more in between: the last answer may
        be there)."""
        if self.peer_gone:
            raise PeerGone("the peer closed the channel or broke its protocol")
        limit = timeout
        if recheck is not None:
            left = recheck - time.perf_counter()
            if left > 0 and (timeout is None or timeout > left):
                limit = left
        events = self.poller.poll(None if limit is None else limit * 1000)
        if not events:
            if limit != timeout:
                return
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
        if self.loadavg is not None:
            os.close(self.loadavg)
