"""The parent-side VMBus of one child partition and its two virtualization service providers
(Hyper-V's VMBus server, after Linux drivers/hv/channel_mgmt.c seen from the host side and
openvmm's vmbus_server): version negotiation, offers, GPADLs, channel open/close, and the
``vmbus-console`` and ``vmbus-block`` VSPs serving packets from the channels' rings.

Offers (GUIDs travel in Windows byte order, ``uuid.bytes_le``); a channel's ``child_relid`` is also
its ``connection_id``, so the child signals it with HvCallSignalEvent(connection_id) and the
parent's ``signal_child(connection_id)`` names the SIEF event flag to set on SINT 2:

    vmbus-console  class 3a7e0c52-6f1d-4b8e-9c1a-5d2f7e6b4a01  instance ...4a10  relid 0x11
    vmbus-block    class 3a7e0c52-6f1d-4b8e-9c1a-5d2f7e6b4a02  instance ...4a20  relid 0x12

The ring pair GPADL holds the child->parent ring first and the parent->child ring from
``downstream_ringbuffer_pageoffset``. Nothing from the child is trusted: every rejection is counted
in ``stats.rejected`` by reason and logged (throttled), and the server keeps serving.
"""
from __future__ import annotations

import logging
import struct
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

from hypervisors.micro.parent import vmbus_messages as msg
from hypervisors.micro.parent.gpadl import PAGE_SIZE, GpadlRefused, GrantedMemory
from hypervisors.micro.parent.vmbus import (
    VM_PKT_COMP, VM_PKT_DATA_INBAND, Packet, PacketTooLarge, RingBuffer, RingCorrupt, RingFull)

log = logging.getLogger(__name__)

CONSOLE_CLASS = uuid.UUID("3a7e0c52-6f1d-4b8e-9c1a-5d2f7e6b4a01")
CONSOLE_INSTANCE = uuid.UUID("3a7e0c52-6f1d-4b8e-9c1a-5d2f7e6b4a10")
BLOCK_CLASS = uuid.UUID("3a7e0c52-6f1d-4b8e-9c1a-5d2f7e6b4a02")
BLOCK_INSTANCE = uuid.UUID("3a7e0c52-6f1d-4b8e-9c1a-5d2f7e6b4a20")
CONSOLE_RELID, BLOCK_RELID = 0x11, 0x12

SUPPORTED_VERSIONS = frozenset({
    msg.VERSION_WS2008, msg.VERSION_WIN7, msg.VERSION_WIN8, msg.VERSION_WIN8_1, msg.VERSION_WIN10,
    msg.VERSION_WIN10_V4_1, msg.VERSION_WIN10_V5, msg.VERSION_WIN10_V5_1, msg.VERSION_WIN10_V5_2})
MESSAGE_CONNECTIONS = (msg.VMBUS_MESSAGE_CONNECTION_ID, msg.VMBUS_MESSAGE_CONNECTION_ID_4)
STATUS_SUCCESS, STATUS_UNSUCCESSFUL = 0, 0xC0000001
MAX_PENDING_GPADLS = 8
MAX_BACKLOG = 32              # completions waiting for ring space before reading stops
LOG_FIRST, LOG_EVERY = 10, 1000


class ProtocolViolation(ValueError):
    """A well-formed message the child may not send now; ``reason`` is a counter key."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


class UnknownConnection(LookupError):
    """A hypercall named a connection id this server does not own: the hypervisor fails it with
    HV_STATUS_INVALID_CONNECTION_ID (the rejection is already counted and logged)."""


@dataclass
class VmbusStats:
    messages: int = 0
    packets: int = 0
    signals: int = 0
    rejected: Counter = field(default_factory=Counter)


@dataclass
class Offer:
    name: str
    interface_type: uuid.UUID
    interface_instance: uuid.UUID
    child_relid: int
    vsp: object

    def message(self) -> msg.OfferChannel:
        return msg.OfferChannel(self.interface_type, self.interface_instance,
                                self.child_relid, self.child_relid)


@dataclass
class Channel:
    """An open channel: the ring pair inside one GPADL, and replies waiting for ring space."""
    offer: Offer
    gpadl: int
    inbound: RingBuffer                    # child -> parent
    outbound: RingBuffer                   # parent -> child
    backlog: list[tuple[int, bytes]] = field(default_factory=list)


@dataclass
class PendingGpadl:
    child_relid: int
    total: int
    pfns: list[int]
    next_msgnumber: int = 1


# ----- the VSPs ----------------------------------------------------------------------------------
CONSOLE_HEADER = struct.Struct("<I4x")     # byte_count, reserved; then the bytes
CONSOLE_COMPLETION = struct.Struct("<II")  # status, byte_count
BLOCK_REQUEST = struct.Struct("<IIQ")      # op, count, sector; WRITE data follows inline
BLOCK_REPLY = struct.Struct("<IIQ")        # status, count, sector; READ data follows inline
SECTOR_SIZE = 512
BLOCK_MAX_SECTORS = 4                      # 2 KiB per request: fits a 2-page data ring
BLOCK_OP_READ, BLOCK_OP_WRITE, BLOCK_OP_GET_CAPACITY = 1, 2, 3
BLOCK_S_OK, BLOCK_S_BAD_REQUEST, BLOCK_S_OUT_OF_RANGE = 0, 1, 2
BLOCK_S_TOO_LARGE, BLOCK_S_IO_ERROR, BLOCK_S_NO_MEDIA = 3, 4, 5


class PacketError(ValueError):
    """A packet a VSP refuses; ``reply`` is the completion still owed to the child (or None)."""

    def __init__(self, reason: str, detail: str, reply: bytes | None = None):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.reply = reply


class ConsoleVsp:
    """vmbus-console: each VM_PKT_DATA_INBAND packet carries {byte_count u32, reserved u32,
    bytes}; the bytes go to ``console`` and the completion is {status u32, byte_count u32}."""

    def __init__(self, console: Callable[[bytes], None]):
        self.console = console

    def handle(self, packet: Packet) -> bytes:
        if packet.type != VM_PKT_DATA_INBAND or len(packet.payload) < CONSOLE_HEADER.size:
            raise PacketError("bad_console_packet", f"type {packet.type}, "
                              f"{len(packet.payload)} bytes")
        (count,) = CONSOLE_HEADER.unpack_from(packet.payload)
        data = packet.payload[CONSOLE_HEADER.size:CONSOLE_HEADER.size + count]
        if len(data) != count:
            raise PacketError("bad_console_packet", f"byte_count {count} > {len(data)} carried",
                              CONSOLE_COMPLETION.pack(BLOCK_S_BAD_REQUEST, 0))
        self.console(data)
        return CONSOLE_COMPLETION.pack(BLOCK_S_OK, count)

    def close(self) -> None:
        """The console sink belongs to the caller."""


class BlockVsp:
    """vmbus-block: 512-byte sectors of the parent's disk image file. A request is
    {op u32, count u32, sector u64} + count x 512 bytes for WRITE; the reply (a completion with
    the request's trans_id) is {status u32, count u32, sector u64} + the data for READ.
    GET_CAPACITY replies with count = 0 and sector = the disk's size in sectors."""

    def __init__(self, disk_image: str | None):
        self.disk = open(disk_image, "r+b") if disk_image else None

    def capacity(self) -> int:
        self.disk.seek(0, 2)
        return self.disk.tell() // SECTOR_SIZE

    def handle(self, packet: Packet) -> bytes:
        if packet.type != VM_PKT_DATA_INBAND or len(packet.payload) < BLOCK_REQUEST.size:
            raise PacketError("bad_block_request", f"type {packet.type}, "
                              f"{len(packet.payload)} bytes", BLOCK_REPLY.pack(1, 0, 0))
        op, count, sector = BLOCK_REQUEST.unpack_from(packet.payload)
        status = self._check(op, count, sector, len(packet.payload) - BLOCK_REQUEST.size)
        if status != BLOCK_S_OK:
            raise PacketError("bad_block_request", f"op {op} count {count} sector {sector}: "
                              f"status {status}", BLOCK_REPLY.pack(status, count, sector))
        if op == BLOCK_OP_GET_CAPACITY:
            return BLOCK_REPLY.pack(BLOCK_S_OK, 0, self.capacity())
        self.disk.seek(sector * SECTOR_SIZE)
        if op == BLOCK_OP_WRITE:
            self.disk.write(packet.payload[BLOCK_REQUEST.size:][:count * SECTOR_SIZE])
            self.disk.flush()
            return BLOCK_REPLY.pack(BLOCK_S_OK, count, sector)
        return BLOCK_REPLY.pack(BLOCK_S_OK, count, sector) + self.disk.read(count * SECTOR_SIZE)

    def _check(self, op: int, count: int, sector: int, carried: int) -> int:
        if self.disk is None:
            return BLOCK_S_NO_MEDIA
        if op not in (BLOCK_OP_READ, BLOCK_OP_WRITE, BLOCK_OP_GET_CAPACITY):
            return BLOCK_S_BAD_REQUEST
        if op == BLOCK_OP_GET_CAPACITY:
            return BLOCK_S_OK
        if not 0 < count <= BLOCK_MAX_SECTORS:
            return BLOCK_S_TOO_LARGE
        if sector + count > self.capacity():
            return BLOCK_S_OUT_OF_RANGE
        if op == BLOCK_OP_WRITE and carried < count * SECTOR_SIZE:
            return BLOCK_S_BAD_REQUEST
        return BLOCK_S_OK

    def close(self) -> None:
        if self.disk is not None:
            self.disk.close()


class VmbusServer:
    """The parent's VMBus for one child partition. The micro hypervisor's parent process calls
    ``on_post_message`` for each HvCallPostMessage and ``on_signal_event`` for each
    HvCallSignalEvent of the child; replies leave through ``post_to_child`` and ``signal_child``."""

    def __init__(self, partition_id: int, memory: GrantedMemory,
                 post_to_child: Callable[[int, int, bytes], None],
                 signal_child: Callable[[int], None], disk_image: str | None,
                 console: Callable[[bytes], None]):
        self.partition_id = partition_id
        self.memory = memory
        self.post_to_child = post_to_child
        self.signal_child = signal_child
        self.stats = VmbusStats()
        self.version: int | None = None
        self.message_sint = msg.VMBUS_MESSAGE_SINT
        self.offers = {offer.child_relid: offer for offer in (
            Offer("vmbus-console", CONSOLE_CLASS, CONSOLE_INSTANCE, CONSOLE_RELID,
                  ConsoleVsp(console)),
            Offer("vmbus-block", BLOCK_CLASS, BLOCK_INSTANCE, BLOCK_RELID, BlockVsp(disk_image)))}
        self.channels: dict[int, Channel] = {}
        self.gpadl_owner: dict[int, int] = {}
        self.pending_gpadls: dict[int, PendingGpadl] = {}
        self._handlers = {
            msg.InitiateContact: self._initiate_contact, msg.RequestOffers: self._request_offers,
            msg.GpadlHeader: self._gpadl_header, msg.GpadlBody: self._gpadl_body,
            msg.OpenChannel: self._open_channel, msg.CloseChannel: self._close_channel,
            msg.GpadlTeardown: self._gpadl_teardown, msg.Unload: self._unload}

    # ----- bookkeeping --------------------------------------------------------------------------
    def reject(self, reason: str, detail: str, level: int = logging.WARNING) -> None:
        """Count a refusal; log the first few of each reason, then every LOG_EVERY-th. Requests
        a VSP answers with an error status are logged at ``logging.INFO`` only."""
        count = self.stats.rejected[reason] = self.stats.rejected[reason] + 1
        if count <= LOG_FIRST or count % LOG_EVERY == 0:
            log.log(level, "partition %d: rejected (%s, #%d): %s", self.partition_id, reason,
                    count, detail)

    def post(self, message: msg.Message) -> None:
        self.post_to_child(self.message_sint, msg.VMBUS_MESSAGE_TYPE, message.pack())

    def close(self) -> None:
        for offer in self.offers.values():
            offer.vsp.close()
        self.memory.close()

    # ----- channel management messages ----------------------------------------------------------
    def on_post_message(self, connection_id: int, message_type: int, payload: bytes) -> None:
        self.stats.messages += 1
        if connection_id not in MESSAGE_CONNECTIONS:
            raise self._unknown_connection(f"HvCallPostMessage to {connection_id:#x}")
        try:
            self._dispatch(message_type, payload)
        except (msg.MessageError, ProtocolViolation, GpadlRefused) as error:
            self.reject(error.reason, f"channel message: {error}")

    def _unknown_connection(self, detail: str) -> UnknownConnection:
        self.reject("unknown_connection", detail)
        return UnknownConnection(f"partition {self.partition_id}: {detail}: no such connection")

    def _dispatch(self, message_type: int, payload: bytes) -> None:
        if message_type != msg.VMBUS_MESSAGE_TYPE:
            raise ProtocolViolation("bad_message_type", f"hv_message type {message_type:#x}")
        message = msg.parse(payload)
        handler = self._handlers.get(type(message))
        if handler is None:
            raise ProtocolViolation("unexpected_msgtype", f"{type(message).__name__} from a child")
        if self.version is None and not isinstance(message, msg.InitiateContact):
            raise ProtocolViolation("not_connected", f"{type(message).__name__} before contact")
        handler(message)

    def _initiate_contact(self, message: msg.InitiateContact) -> None:
        version = message.vmbus_version_requested
        if self.version is not None:
            raise ProtocolViolation("already_connected", f"version {self.version:#x} in use")
        if version not in SUPPORTED_VERSIONS:
            self.reject("unsupported_version", f"version {version:#x}")
            self.post(msg.VersionResponse(0))
            return
        newer = version >= msg.VERSION_WIN10_V5
        self.version = version
        self.message_sint = message.msg_sint if newer else msg.VMBUS_MESSAGE_SINT
        self.post(msg.VersionResponse(1, 0, 0, msg.VMBUS_MESSAGE_CONNECTION_ID_4 if newer
                                      else msg.VMBUS_MESSAGE_CONNECTION_ID))

    def _request_offers(self, message: msg.RequestOffers) -> None:
        for offer in self.offers.values():
            self.post(offer.message())
        self.post(msg.AllOffersDelivered())

    def _offer(self, relid: int) -> Offer:
        offer = self.offers.get(relid)
        if offer is None:
            raise ProtocolViolation("unknown_relid", f"child_relid {relid:#x}")
        return offer

    def _gpadl_header(self, message: msg.GpadlHeader) -> None:
        self._offer(message.child_relid)
        handle = message.gpadl
        if handle in self.pending_gpadls or handle in self.gpadl_owner:
            raise ProtocolViolation("duplicate_gpadl", f"GPADL {handle:#x} already in use")
        if len(self.pending_gpadls) >= MAX_PENDING_GPADLS:
            raise ProtocolViolation("too_many_pending_gpadls", f"{MAX_PENDING_GPADLS} incomplete")
        pending = PendingGpadl(message.child_relid, message.total_pfns, list(message.pfns))
        self.pending_gpadls[handle] = pending
        self._complete_gpadl(handle, pending)

    def _gpadl_body(self, message: msg.GpadlBody) -> None:
        pending = self.pending_gpadls.get(message.gpadl)
        if pending is None:
            raise ProtocolViolation("unknown_gpadl", f"GPADL_BODY for {message.gpadl:#x}")
        if message.msgnumber != pending.next_msgnumber or \
                len(pending.pfns) + len(message.pfns) > pending.total:
            del self.pending_gpadls[message.gpadl]
            raise ProtocolViolation("bad_gpadl_body", f"body {message.msgnumber} of GPADL "
                                    f"{message.gpadl:#x} out of order or too long")
        pending.pfns.extend(message.pfns)
        pending.next_msgnumber += 1
        self._complete_gpadl(message.gpadl, pending)

    def _complete_gpadl(self, handle: int, pending: PendingGpadl) -> None:
        if len(pending.pfns) < pending.total:
            return
        del self.pending_gpadls[handle]
        status = STATUS_SUCCESS
        try:
            self.memory.create_gpadl(handle, tuple(pending.pfns))
            self.gpadl_owner[handle] = pending.child_relid
        except GpadlRefused as refused:
            self.reject(refused.reason, str(refused))
            status = STATUS_UNSUCCESSFUL
        self.post(msg.GpadlCreated(pending.child_relid, handle, status))

    def _open_channel(self, message: msg.OpenChannel) -> None:
        offer = self._offer(message.child_relid)
        status = STATUS_SUCCESS
        try:
            self.channels[offer.child_relid] = self._make_channel(offer, message)
        except ProtocolViolation as violation:
            self.reject(violation.reason, str(violation))
            status = STATUS_UNSUCCESSFUL
        self.post(msg.OpenChannelResult(message.child_relid, message.openid, status))

    def _make_channel(self, offer: Offer, message: msg.OpenChannel) -> Channel:
        handle, split = message.ringbuffer_gpadlhandle, message.downstream_ringbuffer_pageoffset
        if offer.child_relid in self.channels:
            raise ProtocolViolation("already_open", f"channel {offer.child_relid:#x} is open")
        if self.gpadl_owner.get(handle) != offer.child_relid:
            raise ProtocolViolation("unknown_gpadl", f"GPADL {handle:#x} for {offer.name}")
        view = self.memory.view(handle)
        pages = len(view) // PAGE_SIZE
        if not 2 <= split <= pages - 2:
            raise ProtocolViolation("bad_ring_split", f"page offset {split} of {pages} pages")
        inbound = RingBuffer(view.window(0, split * PAGE_SIZE))
        outbound = RingBuffer(view.window(split * PAGE_SIZE, (pages - split) * PAGE_SIZE))
        return Channel(offer, handle, inbound, outbound)

    def _close_channel(self, message: msg.CloseChannel) -> None:
        self._offer(message.child_relid)
        if self.channels.pop(message.child_relid, None) is None:
            raise ProtocolViolation("not_open", f"channel {message.child_relid:#x} is closed")

    def _gpadl_teardown(self, message: msg.GpadlTeardown) -> None:
        handle = message.gpadl
        if self.gpadl_owner.get(handle) != message.child_relid:
            raise ProtocolViolation("unknown_gpadl", f"teardown of GPADL {handle:#x}")
        if any(channel.gpadl == handle for channel in self.channels.values()):
            raise ProtocolViolation("gpadl_in_use", f"GPADL {handle:#x} backs an open channel")
        self.memory.teardown(handle)
        del self.gpadl_owner[handle]
        self.post(msg.GpadlTorndown(handle))

    def _unload(self, message: msg.Unload) -> None:
        self.channels.clear()
        self.pending_gpadls.clear()
        for handle in list(self.gpadl_owner):
            self.memory.teardown(handle)
        self.gpadl_owner.clear()
        self.version = None
        self.post(msg.UnloadResponse())

    # ----- events and packets -------------------------------------------------------------------
    def on_signal_event(self, connection_id: int, flag_number: int) -> None:
        self.stats.signals += 1
        if connection_id not in self.offers:
            raise self._unknown_connection(f"HvCallSignalEvent({connection_id:#x}, {flag_number})")
        channel = self.channels.get(connection_id)
        if channel is None:
            self.reject("signal_closed_channel", f"HvCallSignalEvent({connection_id:#x})")
            return
        self._serve(channel)

    def _serve(self, channel: Channel) -> None:
        """Write waiting completions, then handle packets until the ring is empty or too many
        completions wait for the child to make room; signal the child once at the end."""
        signal, served = False, 0
        try:
            signal = self._flush(channel)
            while len(channel.backlog) < MAX_BACKLOG:
                packet, writer_wants = channel.inbound.read_packet()
                signal |= writer_wants
                if packet is None:
                    break
                served += 1
                signal |= self._handle_packet(channel, packet)
        except (RingCorrupt, GpadlRefused) as corrupt:
            self.reject(corrupt.reason, f"{channel.offer.name}: {corrupt}")
            served += 1
        if not served and not signal:
            self.reject("spurious_signal", f"{channel.offer.name}: nothing to read")
        if signal:
            self.signal_child(channel.offer.child_relid)

    def _handle_packet(self, channel: Channel, packet: Packet) -> bool:
        self.stats.packets += 1
        try:
            reply = channel.offer.vsp.handle(packet)
        except PacketError as error:
            self.reject(error.reason, f"{channel.offer.name}: {error}",
                        logging.INFO if error.reply else logging.WARNING)
            reply = error.reply
        if reply is None or not packet.completion_requested:
            return False
        channel.backlog.append((packet.trans_id, reply))
        return self._flush(channel)

    def _flush(self, channel: Channel) -> bool:
        """Write waiting completions; True if the child must be signalled."""
        signal = False
        while channel.backlog:
            trans_id, reply = channel.backlog[0]
            try:
                signal |= channel.outbound.write_packet(VM_PKT_COMP, reply, trans_id)
            except RingFull:
                return signal
            except PacketTooLarge as error:
                self.reject("reply_too_large", f"{channel.offer.name}: {error}")
            channel.backlog.pop(0)
        return signal
