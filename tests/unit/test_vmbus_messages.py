"""VMBus channel messages (hypervisors/micro/parent/vmbus_messages.py): Linux sizes and numbering,
round trips, and clear errors for malformed payloads."""
from __future__ import annotations

import struct
import uuid

import pytest

from hypervisors.micro.parent import vmbus_messages as msg

GUID = uuid.UUID("3a7e0c52-6f1d-4b8e-9c1a-5d2f7e6b4a01")


@pytest.mark.parametrize("message, size", [
    (msg.InitiateContact(msg.VERSION_WIN10), 40),
    (msg.VersionResponse(1, 0, 0, 1), 16),
    (msg.OfferChannel(GUID, GUID, 0x11, 0x11), 196),
    (msg.OpenChannel(0x11, 1, 5, 0, 3), 148),
    (msg.OpenChannelResult(0x11, 1, 0), 20),
    (msg.GpadlHeader(0x11, 5, 6 * 4096, 0, 6, tuple(range(0x30, 0x36))), 20 + 8 + 48),
    (msg.GpadlBody(1, 5, (7, 8)), 16 + 16),
    (msg.GpadlCreated(0x11, 5, 0), 20),
    (msg.GpadlTeardown(0x11, 5), 16),
    (msg.GpadlTorndown(5), 12),
    (msg.CloseChannel(0x11), 12),
    (msg.RequestOffers(), 8), (msg.AllOffersDelivered(), 8), (msg.Unload(), 8),
])
def test_sizes_match_linux_and_messages_round_trip(message, size):
    packed = message.pack()
    assert len(packed) == size
    assert struct.unpack_from("<I", packed)[0] == message.MSGTYPE
    assert msg.parse(packed) == message


def test_numbering_and_versions_follow_linux():
    assert (msg.CHANNELMSG_OFFERCHANNEL, msg.CHANNELMSG_GPADL_HEADER,
            msg.CHANNELMSG_INITIATE_CONTACT, msg.CHANNELMSG_UNLOAD) == (1, 8, 14, 16)
    assert (msg.VERSION_WS2008, msg.VERSION_WIN10, msg.VERSION_WIN10_V5) == (
        0x000D, 0x40000, 0x50000)


def test_offer_guids_travel_in_windows_byte_order():
    packed = msg.OfferChannel(GUID, GUID, 1, 1).pack()
    assert packed[8:24] == GUID.bytes_le


@pytest.mark.parametrize("payload, reason", [
    (b"\x0e\x00", "short_message"),
    (struct.pack("<II", 14, 0) + b"\x00" * 8, "short_message"),          # INITIATE_CONTACT cut
    (struct.pack("<II", 99, 0), "unknown_msgtype"),
    (bytes(241), "oversized_message"),
    (struct.pack("<IIIIHHII", 8, 0, 1, 5, 16, 2, 4096, 0), "bad_gpadl"),  # two ranges
    (struct.pack("<IIIIHHII", 8, 0, 1, 5, 15, 1, 4096, 0), "bad_gpadl"),  # buflen not 8 + 8n
    (struct.pack("<IIIIHHII", 8, 0, 1, 5, 24, 1, 4096, 0), "bad_gpadl"),  # 2 pfns, 1 page
    (struct.pack("<IIIIHHIIQQ", 8, 0, 1, 5, 16, 1, 4096, 0, 1, 2), "bad_gpadl"),  # extra pfn
])
def test_malformed_payloads_raise_message_error(payload, reason):
    with pytest.raises(msg.MessageError) as error:
        msg.parse(payload)
    assert error.value.reason == reason
    assert reason in str(error.value)
