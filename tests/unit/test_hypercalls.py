"""The TLFS hypercall interface without a CPU: status codes for every kind of bad input, GPA
validation against the child's RAM, forwarding to the port owner, the hypercall page."""
from __future__ import annotations

import struct

import pytest

from emu.memory import GuestMemory
from hypervisors.micro.hypercalls import (HV_STATUS_INSUFFICIENT_BUFFERS,
                                          HV_STATUS_INVALID_ALIGNMENT,
                                          HV_STATUS_INVALID_CONNECTION_ID,
                                          HV_STATUS_INVALID_HYPERCALL_CODE,
                                          HV_STATUS_INVALID_HYPERCALL_INPUT,
                                          HV_STATUS_INVALID_PARAMETER, HV_STATUS_SUCCESS,
                                          HV_X64_MSR_GUEST_OS_ID, HV_X64_MSR_HYPERCALL,
                                          Hypercalls)

POST, SIGNAL, FAST = 0x5C, 0x5D, 1 << 16
INPUT = 0x3000


class Port:
    def __init__(self):
        self.posted, self.signalled, self.full = [], [], False

    def post(self, connection_id, message_type, payload):
        self.posted.append((connection_id, message_type, payload))
        return HV_STATUS_SUCCESS if connection_id == 1 else HV_STATUS_INVALID_CONNECTION_ID

    def signal(self, connection_id, flag):
        self.signalled.append((connection_id, flag))
        return HV_STATUS_SUCCESS if connection_id == 0x11 else HV_STATUS_INVALID_CONNECTION_ID


@pytest.fixture
def calls():
    memory = GuestMemory(1 << 20)
    port = Port()
    calls = Hypercalls(1, memory, port.post, port.signal, lambda: port.full)
    calls.port = port
    yield calls
    memory.close()


def message(calls, connection_id=1, message_type=1, payload=b"hi", size=None, reserved=0,
            gpa=INPUT):
    block = struct.pack("<IIII", connection_id, reserved, message_type,
                        len(payload) if size is None else size) + payload
    calls.memory.write(gpa, block)
    return calls.call(POST, gpa, 0)


def test_post_message_forwards_the_payload(calls):
    assert message(calls, payload=b"hello") == HV_STATUS_SUCCESS
    assert calls.port.posted == [(1, 1, b"hello")]


@pytest.mark.parametrize("options, status", [
    (dict(gpa=INPUT + 4), HV_STATUS_INVALID_ALIGNMENT),
    (dict(gpa=INPUT + 0xF08), HV_STATUS_INVALID_ALIGNMENT),     # 256 bytes cross the page
    (dict(size=241), HV_STATUS_INVALID_PARAMETER),
    (dict(reserved=1), HV_STATUS_INVALID_PARAMETER),
    (dict(message_type=0x80000001), HV_STATUS_INVALID_PARAMETER),
    (dict(message_type=0), HV_STATUS_INVALID_PARAMETER),
    (dict(connection_id=7), HV_STATUS_INVALID_CONNECTION_ID),
])
def test_bad_post_message_input_gets_its_tlfs_status(calls, options, status):
    assert message(calls, **options) == status
    assert sum(calls.rejections.values()) == 1


def test_a_gpa_outside_ram_is_never_read(calls):
    assert calls.call(POST, 1 << 20, 0) == HV_STATUS_INVALID_PARAMETER
    assert calls.call(POST, 0xFFFFFFFF_FFFFF000, 0) == HV_STATUS_INVALID_PARAMETER
    assert calls.port.posted == []
    assert calls.rejections["HV_STATUS_INVALID_PARAMETER"] == 2


def test_unknown_codes_fast_post_and_rep_or_reserved_bits(calls):
    assert calls.call(0x99, INPUT, 0) == HV_STATUS_INVALID_HYPERCALL_CODE
    assert calls.call(POST | FAST, INPUT, 0) == HV_STATUS_INVALID_HYPERCALL_INPUT
    assert calls.call(POST | 1 << 32, INPUT, 0) == HV_STATUS_INVALID_HYPERCALL_INPUT
    assert calls.call(SIGNAL | FAST | 1 << 27, 0x11, 0) == HV_STATUS_INVALID_HYPERCALL_INPUT


def test_a_child_that_does_not_drain_its_slot_gets_insufficient_buffers(calls):
    calls.port.full = True
    assert message(calls) == HV_STATUS_INSUFFICIENT_BUFFERS
    assert calls.port.posted == []


def test_fast_and_memory_signal_event(calls):
    assert calls.call(SIGNAL | FAST, 5 << 32 | 0x11, 0) == HV_STATUS_SUCCESS
    calls.memory.write(INPUT, struct.pack("<IHH", 0x11, 3, 0))
    assert calls.call(SIGNAL, INPUT, 0) == HV_STATUS_SUCCESS
    assert calls.port.signalled == [(0x11, 5), (0x11, 3)]
    assert calls.call(SIGNAL | FAST, 2048 << 32 | 0x11, 0) == HV_STATUS_INVALID_PARAMETER
    assert calls.call(SIGNAL | FAST, 1 << 48 | 0x11, 0) == HV_STATUS_INVALID_PARAMETER
    assert calls.call(SIGNAL | FAST, 0x12, 0) == HV_STATUS_INVALID_CONNECTION_ID


def test_the_hypercall_page_needs_a_guest_os_id(calls):
    calls.write_msr(HV_X64_MSR_HYPERCALL, 0x4000 | 1)
    assert calls.read_msr(HV_X64_MSR_HYPERCALL) == 0
    calls.write_msr(HV_X64_MSR_GUEST_OS_ID, 0x8100)
    calls.write_msr(HV_X64_MSR_HYPERCALL, 0x4000 | 1)
    assert calls.read_msr(HV_X64_MSR_HYPERCALL) == 0x4001
    assert calls.memory.read(0x4000, 4) == b"\x0f\x01\xc1\xc3"
    assert "HvCallPostMessage" not in calls.summary()
