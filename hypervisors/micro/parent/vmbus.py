"""VMBus ring buffers as Linux models them (include/linux/hyperv.h ``struct hv_ring_buffer``,
drivers/hv/ring_buffer.c): a 4 KiB header page, then a data area of byte-offset indices, packets
with a 16-byte ``vmpacket_descriptor`` and an 8-byte "previous indices" trailer.

The ring never signals by itself: ``write_packet`` returns whether the reader needs a signal and
``read_packet`` whether the writer does; the channel delivers it. A ring works on any object that
supports ``len()`` and slice get/set (a bytearray, a memoryview, a granted GPADL view), so it can
be driven straight from Python::

    >>> ram = bytearray(3 * PAGE_SIZE)
    >>> ring = RingBuffer(memoryview(ram)).initialise()
    >>> ring.write_packet(VM_PKT_DATA_INBAND, b"hello", trans_id=7)   # empty -> non-empty
    True
    >>> packet, signal_writer = ring.read_packet()
    >>> packet.payload[:5], packet.trans_id, signal_writer
    (b'hello', 7, False)

Every index, length and offset is read from shared memory and validated before use (the other
side may be a malicious child): corruption raises ``RingCorrupt`` and changes nothing.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

PAGE_SIZE = 4096
HEADER_SIZE = PAGE_SIZE
# struct hv_ring_buffer: write_index, read_index, interrupt_mask, pending_send_sz, reserved1[12],
# feature_bits (bit 0 = feat_pending_send_sz), then padding to the end of the page.
WRITE_INDEX, READ_INDEX, INTERRUPT_MASK, PENDING_SEND_SZ, FEATURE_BITS = 0, 4, 8, 12, 64
FEAT_PENDING_SEND_SZ = 1

# struct vmpacket_descriptor: type u16, offset8 u16, len8 u16, flags u16, trans_id u64.
DESCRIPTOR = struct.Struct("<HHHHQ")
TRAILER = struct.Struct("<Q")              # the "previous indices": old write_index << 32
VM_PKT_DATA_INBAND = 6
VM_PKT_DATA_USING_GPA_DIRECT = 9
VM_PKT_COMP = 11
PACKET_TYPES = frozenset({VM_PKT_DATA_INBAND, VM_PKT_DATA_USING_GPA_DIRECT, VM_PKT_COMP})
VMBUS_DATA_PACKET_FLAG_COMPLETION_REQUESTED = 1


class RingError(ValueError):
    """A ring operation that cannot be carried out."""


class RingCorrupt(RingError):
    """The shared header or a packet descriptor is inconsistent: the peer broke the protocol.
    ``reason`` is a short stable key for counters."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


class PacketTooLarge(RingError):
    """The packet could never fit this ring, however much the reader consumes."""


class RingFull(RingError):
    """Not enough free space for the packet (Linux returns -EAGAIN)."""


@dataclass(frozen=True)
class Packet:
    type: int
    flags: int
    trans_id: int
    payload: bytes

    @property
    def completion_requested(self) -> bool:
        return bool(self.flags & VMBUS_DATA_PACKET_FLAG_COMPLETION_REQUESTED)


def align8(n: int) -> int:
    return (n + 7) & ~7


class RingBuffer:
    """One direction of a channel over ``buffer``: header page + data area. The size of the
    buffer must be the header page plus a whole, non-zero number of pages."""

    def __init__(self, buffer):
        size = len(buffer)
        if size < HEADER_SIZE + PAGE_SIZE or size % PAGE_SIZE:
            raise RingError(f"a ring needs a header page and whole data pages, got {size} bytes")
        self.buffer = buffer
        self.data_size = size - HEADER_SIZE

    # ----- the header ---------------------------------------------------------------------------
    def _u32(self, offset: int) -> int:
        return int.from_bytes(self.buffer[offset:offset + 4], "little")

    def _set_u32(self, offset: int, value: int) -> None:
        self.buffer[offset:offset + 4] = value.to_bytes(4, "little")

    def initialise(self) -> "RingBuffer":
        """The owner's set-up (Linux hv_ringbuffer_init): indices zero, pending_send_sz honoured."""
        self.buffer[0:HEADER_SIZE] = bytes(HEADER_SIZE)
        self._set_u32(FEATURE_BITS, FEAT_PENDING_SEND_SZ)
        return self

    @property
    def interrupt_mask(self) -> int:
        return self._u32(INTERRUPT_MASK)

    @interrupt_mask.setter
    def interrupt_mask(self, value: int) -> None:
        self._set_u32(INTERRUPT_MASK, value)

    @property
    def pending_send_sz(self) -> int:
        return self._u32(PENDING_SEND_SZ)

    @pending_send_sz.setter
    def pending_send_sz(self, value: int) -> None:
        self._set_u32(PENDING_SEND_SZ, value)

    def _index(self, offset: int, name: str) -> int:
        value = self._u32(offset)
        if value >= self.data_size:
            raise RingCorrupt("index_out_of_range",
                              f"{name} {value:#x} outside the {self.data_size:#x}-byte data area")
        if value % 8:
            raise RingCorrupt("index_misaligned", f"{name} {value:#x} is not 8-byte aligned")
        return value

    def indices(self) -> tuple[int, int]:
        """(write_index, read_index), validated."""
        return self._index(WRITE_INDEX, "write_index"), self._index(READ_INDEX, "read_index")

    def bytes_to_read(self) -> int:
        write, read = self.indices()
        return write - read if write >= read else self.data_size - read + write

    def bytes_to_write(self) -> int:
        """Free space; one byte is always left free so that write == read means empty."""
        return self.data_size - self.bytes_to_read()

    # ----- data area with wrap-around -----------------------------------------------------------
    def _copy_out(self, start: int, length: int) -> bytes:
        first = min(length, self.data_size - start)
        base = HEADER_SIZE + start
        head = bytes(self.buffer[base:base + first])
        return head + bytes(self.buffer[HEADER_SIZE:HEADER_SIZE + length - first])

    def _copy_in(self, start: int, data: bytes) -> int:
        first = min(len(data), self.data_size - start)
        base = HEADER_SIZE + start
        self.buffer[base:base + first] = data[:first]
        rest = len(data) - first
        self.buffer[HEADER_SIZE:HEADER_SIZE + rest] = data[first:]
        return (start + len(data)) % self.data_size

    # ----- the writer ---------------------------------------------------------------------------
    def write_packet(self, type: int, payload: bytes, trans_id: int = 0, flags: int = 0) -> bool:
        """Append one packet (Linux hv_ringbuffer_write). Returns True when the reader must be
        signalled: the ring went from empty to non-empty and interrupt_mask is clear."""
        packet_len = DESCRIPTOR.size + align8(len(payload))
        if packet_len >> 3 > 0xFFFF or packet_len + TRAILER.size >= self.data_size:
            raise PacketTooLarge(f"a {len(payload)}-byte payload can never fit this ring "
                            f"({self.data_size}-byte data area)")
        old_write, read = self.indices()
        if self.bytes_to_write() <= packet_len + TRAILER.size:
            raise RingFull(f"{packet_len + TRAILER.size} bytes needed, "
                           f"{self.bytes_to_write()} free")
        descriptor = DESCRIPTOR.pack(type, DESCRIPTOR.size >> 3, packet_len >> 3, flags, trans_id)
        body = descriptor + payload + bytes(align8(len(payload)) - len(payload))
        position = self._copy_in(old_write, body + TRAILER.pack(old_write << 32))
        self._set_u32(WRITE_INDEX, position)
        return old_write == read and not self.interrupt_mask

    # ----- the reader ---------------------------------------------------------------------------
    def peek_descriptor(self) -> tuple[int, int, int, int, int] | None:
        """The next packet's validated descriptor (type, offset8, len8, flags, trans_id)."""
        available = self.bytes_to_read()
        if available == 0:
            return None
        if available < DESCRIPTOR.size + TRAILER.size:
            raise RingCorrupt("short_packet", f"only {available} bytes in the ring")
        _, read = self.indices()
        fields = DESCRIPTOR.unpack(self._copy_out(read, DESCRIPTOR.size))
        self._check_descriptor(*fields[:3], available)
        return fields

    @staticmethod
    def _check_descriptor(type: int, offset8: int, len8: int, available: int) -> None:
        if type not in PACKET_TYPES:
            raise RingCorrupt("bad_packet_type", f"packet type {type}")
        if len8 << 3 < DESCRIPTOR.size:
            raise RingCorrupt("bad_len8", f"len8 {len8} is shorter than the descriptor")
        if (len8 << 3) + TRAILER.size > available:
            raise RingCorrupt("oversized_packet",
                              f"len8 {len8} ({len8 << 3} bytes + trailer) > {available} in ring")
        if offset8 << 3 < DESCRIPTOR.size or offset8 > len8:
            raise RingCorrupt("bad_offset8", f"offset8 {offset8} with len8 {len8}")

    def read_packet(self) -> tuple[Packet | None, bool]:
        """Consume the next packet (Linux hv_pkt_iter_first/next/close). Returns the packet (None
        when empty) and whether the writer must be signalled: pending_send_sz is set and the free
        space crossed it with this read."""
        fields = self.peek_descriptor()
        if fields is None:
            return None, False
        type, offset8, len8, flags, trans_id = fields
        _, read = self.indices()
        payload = self._copy_out((read + (offset8 << 3)) % self.data_size, (len8 - offset8) << 3)
        consumed = (len8 << 3) + TRAILER.size
        before = self.bytes_to_write()
        self._set_u32(READ_INDEX, (read + consumed) % self.data_size)
        return Packet(type, flags, trans_id, payload), self._writer_wants(before)

    def _writer_wants(self, free_before: int) -> bool:
        pending = self.pending_send_sz
        return bool(pending) and free_before <= pending < self.bytes_to_write()
