"""The hypervisor's side of devices that live in the parent partition (crosvm's ProxyDevice).

``ParentChannel`` sends one intercept message per port access through the partition's
shared-memory slot (slot.py) and waits for the reply, applying the notifications that precede
it. Each reply carries the parent's interrupt-controller and timer state, which ``PicMirror``,
``TimerMirror`` and ``InputMirror`` present to the vCPU loop as its ``InterruptController``,
``Timer`` and input source: the loop queries them between slices without a round trip; only
INTA, due timer edges and input polls travel.
"""
from __future__ import annotations

from typing import Callable

from hypervisors.micro.slot import REP_LEN, REP_SEQ, SlotEnd
from hypervisors.micro.wire import (
    ALL_MASKED,
    COUNTING,
    HEADER,
    INPUT_ALIVE,
    INT_OUTPUT,
    IO_READ,
    IO_WRITE,
    ISA_LINES,
    MORE,
    NO_DEADLINE,
    REPLY,
    MalformedRecord,
    Message,
    Op,
    unpack_record,
)
from vmm.bus import Bus

ALL_ONES = 0xFFFFFFFF


class ParentChannel:
    """One child partition's synchronous channel to the parent partition.

    ``on_record`` receives every notification (console bytes, guest exit, hv_messages, events,
    faults) in order, before the reply's state is mirrored. If the parent is gone, ``on_lost``
    is told once and every later request answers all-ones without touching the socket."""

    def __init__(self, link: SlotEnd, clock, on_record: Callable[[Message], None],
                 on_lost: Callable[[str], None], on_state: Callable[[int], None],
                 on_isa_lines: Callable[[int, int], None]):
        self.link = link
        self.clock = clock
        self.on_record = on_record
        self.on_lost = on_lost
        self.on_state = on_state
        self.on_isa_lines = on_isa_lines
        self.state = ALL_MASKED   # wire.State bits, as an int
        self.deadline: int | None = None
        self.lost: str | None = None
        self.seq = 0
        self.round_trips = 0

    def call(self, op: int, size: int = 0, aux: int = 0, value: int = 0,
             payload: bytes = b"") -> int:
        if self.lost is not None:
            return ALL_ONES
        try:
            result = self._round_trip(op, size, aux, value, payload)
            while self.state & MORE:
                self._round_trip(Op.DRAIN)
        except (OSError, EOFError, ValueError) as exc:
            self._lose(exc)
            return ALL_ONES
        return result

    def _round_trip(self, op: int, size: int = 0, aux: int = 0, value: int = 0,
                    payload: bytes = b"") -> int:
        """One request through the slot; the reply's value, after its notifications. The
        usual answer, a lone REPLY without ISA lines, is read straight from the slot."""
        link, start = self.link, self.link.out_offset
        HEADER.pack_into(link.map, start, op, size, aux, value & 0xFFFFFFFF, self.clock.now_ns(),
                         len(payload))
        if payload:
            link.map[start + HEADER.size:start + HEADER.size + len(payload)] = payload
        self.seq = seq = (self.seq + 1) & 0xFFFFFFFF
        link.publish(seq, HEADER.size + len(payload))
        link.wait_for(REP_SEQ, seq)
        offset, end = link.incoming(REP_LEN)
        if end - offset == HEADER.size and link.map[offset] == REPLY:
            _op, state, _aux, result, deadline, length = HEADER.unpack_from(link.map, offset)
            if length:
                raise MalformedRecord(f"a REPLY announces {length} payload bytes but carries 0")
            lines = b""
        else:
            state, result, deadline, lines = self._records(offset, end)
        self.round_trips += 1
        self.state = state
        self.deadline = None if deadline == NO_DEADLINE else deadline
        if lines:
            self.on_isa_lines(*ISA_LINES.unpack(lines))
        self.on_state(state)
        return result

    def _records(self, offset: int, end: int) -> tuple[int, int, int, bytes]:
        """(state, value, deadline, ISA lines) of the REPLY that ends the records at
        ``offset``, after handing each notification before it to ``on_record``."""
        reply, offset = unpack_record(self.link.map, offset, end)
        if reply.op != REPLY:
            reply = self._notifications(reply, offset, end)
        return reply.size, reply.value, reply.time, reply.payload

    def _notifications(self, first: Message, offset: int, end: int) -> Message:
        """Hand ``first`` and the records after it to ``on_record``, all read out of the slot
        before the first is handled; the REPLY that ends them."""
        records = [first]
        reply, offset = unpack_record(self.link.map, offset, end)
        while reply.op != REPLY:
            records.append(reply)
            reply, offset = unpack_record(self.link.map, offset, end)
        for record in records:
            self.on_record(record)
        return reply

    def _lose(self, exc: BaseException) -> None:
        detail = str(exc) or type(exc).__name__
        self.lost = f"the parent partition stopped answering ({detail})"
        self.state = ALL_MASKED
        self.deadline = None
        self.on_lost(self.lost)

    def close(self) -> None:
        self.link.close()


class ProxyDevice:
    """A port window whose device model runs in the parent: every access is a round trip."""

    def __init__(self, name: str, base: int, channel: ParentChannel):
        self.name = name
        self.base = base
        self.channel = channel

    def read(self, offset: int, size: int) -> int:
        value = self.channel.call(IO_READ, size, self.base + offset)
        return value & ((1 << 8 * size) - 1)

    def write(self, offset: int, size: int, value: int) -> None:
        self.channel.call(IO_WRITE, size, self.base + offset, value)


class ProxyMmio(ProxyDevice):
    """An MMIO window whose device model runs in the parent: every access is a round trip
    (1, 2 or 4 bytes; the parent refuses other sizes with a FAULT)."""

    def read(self, offset: int, size: int) -> int:
        value = self.channel.call(Op.MMIO_READ, size, 0, self.base + offset)
        return value & ((1 << 8 * size) - 1)

    def write(self, offset: int, size: int, value: int) -> None:
        self.channel.call(Op.MMIO_WRITE, size, 0, self.base + offset,
                          (value & ((1 << 8 * size) - 1)).to_bytes(size, "little"))


def install_proxies(bus: Bus, layout: bytes, channel: ParentChannel, mmio: Bus) -> None:
    """Claim on the hypervisor's buses exactly the windows the parent's devices occupy, so an
    unclaimed port reads all-ones here without a round trip, as it would on the parent's bus
    ('mBASE' lines are MMIO windows)."""
    for line in layout.decode().splitlines():
        base, length, name = line.split(" ", 2)
        if base.startswith("m"):
            mmio.insert(ProxyMmio(name, int(base[1:]), channel), int(base[1:]), int(length))
        else:
            bus.insert(ProxyDevice(name, int(base), channel), int(base), int(length))


class PicMirror:
    """The parent's 8259 pair as the vCPU loop sees it: INT output and masks from the last
    reply; INTA is a message (the acknowledge changes IRR/ISR in the parent)."""

    def __init__(self, channel: ParentChannel):
        self.channel = channel

    def all_masked(self) -> bool:
        return bool(self.channel.state & ALL_MASKED)

    def has_interrupt(self) -> bool:
        return bool(self.channel.state & INT_OUTPUT)

    def acknowledge(self) -> int:
        return self.channel.call(Op.ACKNOWLEDGE) & 0xFF


class TimerMirror:
    """The parent's PIT as a vCPU timer: deadlines come with every reply, so a slice ends on
    time; an update travels only when the deadline has passed (the PIT fires exactly then)."""

    def __init__(self, channel: ParentChannel, clock):
        self.channel = channel
        self.clock = clock

    def counting(self) -> bool:
        return bool(self.channel.state & COUNTING)

    def next_deadline_ns(self) -> int | None:
        return self.channel.deadline

    def update(self) -> None:
        deadline = self.channel.deadline
        if deadline is not None and self.clock.now_ns() >= deadline:
            self.channel.call(Op.UPDATE_TIMERS)


class InputMirror:
    """The parent's host-input line: polled (a round trip) only while input remains."""

    def __init__(self, channel: ParentChannel):
        self.channel = channel

    def poll(self) -> None:
        if self.alive():
            self.channel.call(Op.POLL_INPUT)

    def alive(self) -> bool:
        return bool(self.channel.state & INPUT_ALIVE)
