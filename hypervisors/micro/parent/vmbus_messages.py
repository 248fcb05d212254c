"""VMBus channel-management messages, carried in the 240-byte payload of a SynIC hv_message
(Linux drivers/hv/hyperv_vmbus.h and include/linux/hyperv.h: ``vmbus_channel_message_type``
numbering, ``__packed`` little-endian layouts, each behind an 8-byte message header).

``parse(payload)`` validates and decodes; every message class ``pack()``s itself. Malformed input
raises ``MessageError`` whose ``reason`` is a short stable key for counters.
"""
from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass, field
from typing import ClassVar

HV_MESSAGE_PAYLOAD_BYTE_COUNT = 240
VMBUS_MESSAGE_CONNECTION_ID = 1            # the message connection before VERSION_WIN10_V5
VMBUS_MESSAGE_CONNECTION_ID_4 = 4          # ... and from VERSION_WIN10_V5 on
VMBUS_MESSAGE_SINT = 2                     # the SINT the host posts channel messages to
VMBUS_MESSAGE_TYPE = 1                     # hv_message.message_type of a channel message

VERSION_WS2008 = (0 << 16) | 13
VERSION_WIN7 = (1 << 16) | 1
VERSION_WIN8 = (2 << 16) | 4
VERSION_WIN8_1 = (3 << 16) | 0
VERSION_WIN10 = (4 << 16) | 0
VERSION_WIN10_V4_1 = (4 << 16) | 1
VERSION_WIN10_V5 = (5 << 16) | 0
VERSION_WIN10_V5_1 = (5 << 16) | 1
VERSION_WIN10_V5_2 = (5 << 16) | 2
VERSION_WIN10_V5_3 = (5 << 16) | 3

CHANNELMSG_OFFERCHANNEL = 1
CHANNELMSG_REQUESTOFFERS = 3
CHANNELMSG_ALLOFFERS_DELIVERED = 4
CHANNELMSG_OPENCHANNEL = 5
CHANNELMSG_OPENCHANNEL_RESULT = 6
CHANNELMSG_CLOSECHANNEL = 7
CHANNELMSG_GPADL_HEADER = 8
CHANNELMSG_GPADL_BODY = 9
CHANNELMSG_GPADL_CREATED = 10
CHANNELMSG_GPADL_TEARDOWN = 11
CHANNELMSG_GPADL_TORNDOWN = 12
CHANNELMSG_INITIATE_CONTACT = 14
CHANNELMSG_VERSION_RESPONSE = 15
CHANNELMSG_UNLOAD = 16
CHANNELMSG_UNLOAD_RESPONSE = 17

HEADER = struct.Struct("<II")              # vmbus_channel_message_header: msgtype, padding
GPA_RANGE = struct.Struct("<II")           # gpa_range: byte_count, byte_offset, pfn_array[]
PFN = struct.Struct("<Q")
HV_HYP_PAGE_SIZE = 4096


class MessageError(ValueError):
    """A channel message that cannot be decoded; ``reason`` is a counter key."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


class Message:
    """A fixed-layout message: the dataclass fields, in order, are packed with ``BODY``."""
    MSGTYPE: ClassVar[int]
    BODY: ClassVar[struct.Struct] = struct.Struct("<")

    def values(self) -> tuple:
        return tuple(self.__dict__.values())

    def pack(self) -> bytes:
        return HEADER.pack(self.MSGTYPE, 0) + self.BODY.pack(*self.values())

    @classmethod
    def unpack(cls, body: bytes) -> "Message":
        if len(body) < cls.BODY.size:
            raise MessageError("short_message", f"{cls.__name__} needs {cls.BODY.size} bytes "
                               f"after the header, got {len(body)}")
        return cls(*cls.BODY.unpack_from(body))


@dataclass
class InitiateContact(Message):
    MSGTYPE = CHANNELMSG_INITIATE_CONTACT
    BODY = struct.Struct("<IIQQQ")
    vmbus_version_requested: int
    target_vcpu: int = 0
    interrupt_page: int = 0                # from VERSION_WIN10_V5: byte 0 = msg_sint
    monitor_page1: int = 0
    monitor_page2: int = 0

    @property
    def msg_sint(self) -> int:
        return self.interrupt_page & 0xFF


@dataclass
class VersionResponse(Message):
    MSGTYPE = CHANNELMSG_VERSION_RESPONSE
    BODY = struct.Struct("<BBHI")
    version_supported: int
    connection_state: int = 0
    padding: int = 0
    msg_conn_id: int = 0


@dataclass
class RequestOffers(Message):
    MSGTYPE = CHANNELMSG_REQUESTOFFERS


@dataclass
class AllOffersDelivered(Message):
    MSGTYPE = CHANNELMSG_ALLOFFERS_DELIVERED


@dataclass
class Unload(Message):
    MSGTYPE = CHANNELMSG_UNLOAD


@dataclass
class UnloadResponse(Message):
    MSGTYPE = CHANNELMSG_UNLOAD_RESPONSE


@dataclass
class OfferChannel(Message):
    """vmbus_channel_offer_channel (196 bytes): GUIDs travel in Windows byte order (bytes_le)."""
    MSGTYPE = CHANNELMSG_OFFERCHANNEL
    BODY = struct.Struct("<16s16sQQHH120sHHIBBHI")
    interface_type: uuid.UUID
    interface_instance: uuid.UUID
    child_relid: int
    connection_id: int
    monitorid: int = 0
    monitor_allocated: int = 0
    is_dedicated_interrupt: int = 0

    def values(self) -> tuple:
        return (self.interface_type.bytes_le, self.interface_instance.bytes_le, 0, 0, 0, 0,
                bytes(120), 0, 0, self.child_relid, self.monitorid, self.monitor_allocated,
                self.is_dedicated_interrupt, self.connection_id)

    @classmethod
    def unpack(cls, body: bytes) -> "OfferChannel":
        if len(body) < cls.BODY.size:
            raise MessageError("short_message", f"OFFERCHANNEL of {len(body)} bytes")
        fields = cls.BODY.unpack_from(body)
        return cls(uuid.UUID(bytes_le=fields[0]), uuid.UUID(bytes_le=fields[1]),
                   fields[9], fields[13], fields[10], fields[11], fields[12])


@dataclass
class OpenChannel(Message):
    MSGTYPE = CHANNELMSG_OPENCHANNEL
    BODY = struct.Struct("<IIIII120s")
    child_relid: int
    openid: int
    ringbuffer_gpadlhandle: int
    target_vp: int
    downstream_ringbuffer_pageoffset: int
    userdata: bytes = field(default=bytes(120), repr=False)


@dataclass
class OpenChannelResult(Message):
    MSGTYPE = CHANNELMSG_OPENCHANNEL_RESULT
    BODY = struct.Struct("<III")
    child_relid: int
    openid: int
    status: int


@dataclass
class CloseChannel(Message):
    MSGTYPE = CHANNELMSG_CLOSECHANNEL
    BODY = struct.Struct("<I")
    child_relid: int


@dataclass
class GpadlCreated(Message):
    MSGTYPE = CHANNELMSG_GPADL_CREATED
    BODY = struct.Struct("<III")
    child_relid: int
    gpadl: int
    creation_status: int


@dataclass
class GpadlTeardown(Message):
    MSGTYPE = CHANNELMSG_GPADL_TEARDOWN
    BODY = struct.Struct("<II")
    child_relid: int
    gpadl: int


@dataclass
class GpadlTorndown(Message):
    MSGTYPE = CHANNELMSG_GPADL_TORNDOWN
    BODY = struct.Struct("<I")
    gpadl: int


@dataclass
class GpadlHeader(Message):
    """vmbus_channel_gpadl_header with one gpa_range; ``pfns`` are the ones in this message, the
    rest follow in GPADL_BODY messages. ``range_buflen`` = 8 + 8 x the range's total PFNs."""
    MSGTYPE = CHANNELMSG_GPADL_HEADER
    BODY = struct.Struct("<IIHH")
    child_relid: int
    gpadl: int
    byte_count: int
    byte_offset: int
    total_pfns: int
    pfns: tuple[int, ...] = field(default_factory=tuple)

    def pack(self) -> bytes:
        buflen = GPA_RANGE.size + PFN.size * self.total_pfns
        return (HEADER.pack(self.MSGTYPE, 0)
                + self.BODY.pack(self.child_relid, self.gpadl, buflen, 1)
                + GPA_RANGE.pack(self.byte_count, self.byte_offset) + _pack_pfns(self.pfns))

    @classmethod
    def unpack(cls, body: bytes) -> "GpadlHeader":
        if len(body) < cls.BODY.size + GPA_RANGE.size:
            raise MessageError("short_message", f"GPADL_HEADER of {len(body)} bytes")
        relid, gpadl, buflen, rangecount = cls.BODY.unpack_from(body)
        if rangecount != 1:
            raise MessageError("bad_gpadl", f"rangecount {rangecount} (only 1 range is supported)")
        byte_count, byte_offset = GPA_RANGE.unpack_from(body, cls.BODY.size)
        total = _range_pages(buflen, byte_count, byte_offset)
        pfns = _unpack_pfns(body[cls.BODY.size + GPA_RANGE.size:])
        if len(pfns) > total:
            raise MessageError("bad_gpadl", f"{len(pfns)} PFNs for a {total}-page range")
        return cls(relid, gpadl, byte_count, byte_offset, total, pfns)


@dataclass
class GpadlBody(Message):
    MSGTYPE = CHANNELMSG_GPADL_BODY
    BODY = struct.Struct("<II")
    msgnumber: int
    gpadl: int
    pfns: tuple[int, ...] = field(default_factory=tuple)

    def pack(self) -> bytes:
        return (HEADER.pack(self.MSGTYPE, 0) + self.BODY.pack(self.msgnumber, self.gpadl)
                + _pack_pfns(self.pfns))

    @classmethod
    def unpack(cls, body: bytes) -> "GpadlBody":
        if len(body) < cls.BODY.size:
            raise MessageError("short_message", f"GPADL_BODY of {len(body)} bytes")
        msgnumber, gpadl = cls.BODY.unpack_from(body)
        return cls(msgnumber, gpadl, _unpack_pfns(body[cls.BODY.size:]))


def _range_pages(buflen: int, byte_count: int, byte_offset: int) -> int:
    total = (buflen - GPA_RANGE.size) // PFN.size
    if buflen < GPA_RANGE.size or (buflen - GPA_RANGE.size) % PFN.size:
        raise MessageError("bad_gpadl", f"range_buflen {buflen} is not 8 + 8 x pages")
    needed = -(-(byte_offset + byte_count) // HV_HYP_PAGE_SIZE)
    if byte_offset >= HV_HYP_PAGE_SIZE or byte_count == 0 or needed != total:
        raise MessageError("bad_gpadl", f"byte_count {byte_count} at offset {byte_offset} "
                           f"needs {needed} pages, range_buflen gives {total}")
    return total


def _pack_pfns(pfns: tuple[int, ...]) -> bytes:
    return b"".join(PFN.pack(pfn) for pfn in pfns)


def _unpack_pfns(data: bytes) -> tuple[int, ...]:
    usable = len(data) - len(data) % PFN.size
    return tuple(value for (value,) in PFN.iter_unpack(data[:usable]))


MESSAGES: dict[int, type[Message]] = {cls.MSGTYPE: cls for cls in (
    InitiateContact, VersionResponse, RequestOffers, AllOffersDelivered, Unload, UnloadResponse,
    OfferChannel, OpenChannel, OpenChannelResult, CloseChannel, GpadlHeader, GpadlBody,
    GpadlCreated, GpadlTeardown, GpadlTorndown)}


def parse(payload: bytes) -> Message:
    """Decode one channel message from an hv_message payload."""
    if len(payload) > HV_MESSAGE_PAYLOAD_BYTE_COUNT:
        raise MessageError("oversized_message", f"{len(payload)} bytes > 240")
    if len(payload) < HEADER.size:
        raise MessageError("short_message", f"{len(payload)} bytes, no message header")
    msgtype, _ = HEADER.unpack_from(payload)
    cls = MESSAGES.get(msgtype)
    if cls is None:
        raise MessageError("unknown_msgtype", f"channel message type {msgtype}")
    return cls.unpack(bytes(payload[HEADER.size:]))
