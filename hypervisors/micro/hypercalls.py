"""The micro hypervisor's hypercall interface: the Hyper-V TLFS 32-bit calling convention, the
hypercall-page and guest-OS-ID MSRs, HvCallPostMessage (0x5C) and HvCallSignalEvent (0x5D).

32-bit ABI (TLFS "Hypercall Interface"): EDX:EAX = hypercall input value (bits 15:0 call code,
bit 16 fast, 26:17 variable header size, 43:32 rep count, 59:48 rep start index, the rest RsvdZ),
EBX:ECX = input parameter GPA (a fast call's 8 bytes of input), EDI:ESI = output GPA; the result
value returns in EDX:EAX with the HV_STATUS in bits 15:0. Every GPA a child passes is checked
against its RAM before it is read; each refusal is counted and logged.
"""
from __future__ import annotations

import collections
import logging
import struct
from typing import Callable

from hypervisors.micro.synic import HV_MESSAGE_PAYLOAD_BYTE_COUNT

HVCALL_POST_MESSAGE = 0x005C
HVCALL_SIGNAL_EVENT = 0x005D
CALL_NAMES = {HVCALL_POST_MESSAGE: "HvCallPostMessage", HVCALL_SIGNAL_EVENT: "HvCallSignalEvent"}
HV_HYPERCALL_FAST_BIT = 1 << 16
HV_HYPERCALL_RSVD_MASK = (0x3FF << 17) | (0xF << 27) | (1 << 31) | (0xF << 44) | (0xF << 60)
HV_HYPERCALL_REP_MASK = (0xFFF << 32) | (0xFFF << 48)

HV_STATUS_SUCCESS = 0x0000
HV_STATUS_INVALID_HYPERCALL_CODE = 0x0002
HV_STATUS_INVALID_HYPERCALL_INPUT = 0x0003
HV_STATUS_INVALID_ALIGNMENT = 0x0004
HV_STATUS_INVALID_PARAMETER = 0x0005
HV_STATUS_INVALID_CONNECTION_ID = 0x0012
HV_STATUS_INSUFFICIENT_BUFFERS = 0x0013
STATUS_NAMES = {HV_STATUS_SUCCESS: "HV_STATUS_SUCCESS",
                HV_STATUS_INVALID_HYPERCALL_CODE: "HV_STATUS_INVALID_HYPERCALL_CODE",
                HV_STATUS_INVALID_HYPERCALL_INPUT: "HV_STATUS_INVALID_HYPERCALL_INPUT",
                HV_STATUS_INVALID_ALIGNMENT: "HV_STATUS_INVALID_ALIGNMENT",
                HV_STATUS_INVALID_PARAMETER: "HV_STATUS_INVALID_PARAMETER",
                HV_STATUS_INVALID_CONNECTION_ID: "HV_STATUS_INVALID_CONNECTION_ID",
                HV_STATUS_INSUFFICIENT_BUFFERS: "HV_STATUS_INSUFFICIENT_BUFFERS"}

HV_X64_MSR_GUEST_OS_ID = 0x40000000
HV_X64_MSR_HYPERCALL = 0x40000001
HV_X64_MSR_VP_INDEX = 0x40000002
HV_X64_MSR_HYPERCALL_ENABLE = 1 << 0
HYPERCALL_MSRS = frozenset((HV_X64_MSR_GUEST_OS_ID, HV_X64_MSR_HYPERCALL, HV_X64_MSR_VP_INDEX))
HYPERCALL_PAGE_CODE = b"\x0f\x01\xc1\xc3"   # vmcall; ret

HV_POST_MESSAGE_INPUT = struct.Struct("<IIII")  # ConnectionId, Reserved, MessageType, PayloadSize
HV_POST_MESSAGE_SIZE = HV_POST_MESSAGE_INPUT.size + HV_MESSAGE_PAYLOAD_BYTE_COUNT
HV_SIGNAL_EVENT_SIZE = 8
HV_EVENT_FLAG_COUNT = 2048
HV_MESSAGE_TYPE_HYPERVISOR_MASK = 0x80000000    # types the hypervisor itself sends
PAGE_SIZE = 0x1000

log = logging.getLogger("trapvisor.micro.hypercalls")


class HypercallRejected(Exception):
    """A hypercall's input failed validation; carries the HV_STATUS to return."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status


class Hypercalls:
    """The hypercalls one child partition may make. ``post_message(connection_id, type,
    payload) -> status`` and ``signal_event(connection_id, flag) -> status`` forward to the
    port's owner (the parent partition); ``queue_full()`` tells whether the child has left its
    own message slot undrained for so long that the hypervisor refuses new messages from it."""

    def __init__(self, partition_id: int, memory, post_message: Callable[[int, int, bytes], int],
                 signal_event: Callable[[int, int], int], queue_full: Callable[[], bool]):
        self.partition_id = partition_id
        self.memory = memory
        self.post_message = post_message
        self.signal_event = signal_event
        self.queue_full = queue_full
        self.guest_os_id = 0
        self.hypercall_msr = 0
        self.calls: collections.Counter[str] = collections.Counter()
        self.rejections: collections.Counter[str] = collections.Counter()
        self.table = {HVCALL_POST_MESSAGE: self._post_message,
                      HVCALL_SIGNAL_EVENT: self._signal_event}

    def call(self, control: int, input_gpa: int, output_gpa: int) -> int:
        """One hypercall: the input value and GPAs as the guest's registers gave them; returns
        the 64-bit result value (the status in bits 15:0, no reps completed)."""
        code = control & 0xFFFF
        handler = self.table.get(code)
        name = CALL_NAMES.get(code, f"call code {code:#06x}")
        self.calls[name] += 1
        try:
            if handler is None:
                raise HypercallRejected(HV_STATUS_INVALID_HYPERCALL_CODE, "unknown call code")
            if control & (HV_HYPERCALL_RSVD_MASK | HV_HYPERCALL_REP_MASK):
                raise HypercallRejected(HV_STATUS_INVALID_HYPERCALL_INPUT,
                                        f"reserved or rep bits set in input value {control:#x}")
            return handler(bool(control & HV_HYPERCALL_FAST_BIT), input_gpa)
        except HypercallRejected as rejection:
            return self._reject(name, rejection)

    def _reject(self, name: str, rejection: HypercallRejected) -> int:
        status_name = STATUS_NAMES[rejection.status]
        self.rejections[status_name] += 1
        log.warning("partition %d: %s rejected with %s: %s", self.partition_id, name,
                    status_name, rejection)
        return rejection.status

    def _input(self, gpa: int, length: int) -> bytes:
        """The input parameter block, only if it lies 8-byte aligned inside one page of RAM."""
        if gpa % 8:
            raise HypercallRejected(HV_STATUS_INVALID_ALIGNMENT, f"input GPA {gpa:#x} is not "
                                    "8-byte aligned")
        if gpa % PAGE_SIZE + length > PAGE_SIZE:
            raise HypercallRejected(HV_STATUS_INVALID_ALIGNMENT, f"input at GPA {gpa:#x} "
                                    f"({length} bytes) crosses a page boundary")
        if not self.memory.contains(gpa, length):
            raise HypercallRejected(HV_STATUS_INVALID_PARAMETER, f"input GPA {gpa:#x} is outside "
                                    f"the partition's RAM ({self.memory.size:#x} bytes)")
        return self.memory.read(gpa, length)

    def _post_message(self, fast: bool, input_gpa: int) -> int:
        """HvCallPostMessage: send a message to a port of another partition."""
        if fast:
            raise HypercallRejected(HV_STATUS_INVALID_HYPERCALL_INPUT,
                                    "HvCallPostMessage has no fast (register) form")
        block = self._input(input_gpa, HV_POST_MESSAGE_SIZE)
        connection_id, reserved, message_type, size = HV_POST_MESSAGE_INPUT.unpack_from(block)
        if reserved or size > HV_MESSAGE_PAYLOAD_BYTE_COUNT:
            raise HypercallRejected(HV_STATUS_INVALID_PARAMETER, f"PayloadSize {size} (at most "
                                    f"{HV_MESSAGE_PAYLOAD_BYTE_COUNT}), Reserved {reserved:#x}")
        if message_type & HV_MESSAGE_TYPE_HYPERVISOR_MASK or not message_type:
            raise HypercallRejected(HV_STATUS_INVALID_PARAMETER,
                                    f"MessageType {message_type:#x} is not a partition's to send")
        if self.queue_full():
            raise HypercallRejected(HV_STATUS_INSUFFICIENT_BUFFERS, "the child's own message "
                                    "queue is full: it must drain its SIMP slot (EOM) first")
        payload = block[HV_POST_MESSAGE_INPUT.size:HV_POST_MESSAGE_INPUT.size + size]
        return self._forwarded(connection_id,
                               self.post_message(connection_id, message_type, payload))

    def _signal_event(self, fast: bool, input_gpa: int) -> int:
        """HvCallSignalEvent: set an event flag of another partition's port."""
        block = (input_gpa.to_bytes(8, "little") if fast
                 else self._input(input_gpa, HV_SIGNAL_EVENT_SIZE))
        connection_id, flag, reserved = struct.unpack("<IHH", block)
        if reserved or flag >= HV_EVENT_FLAG_COUNT:
            raise HypercallRejected(HV_STATUS_INVALID_PARAMETER,
                                    f"FlagNumber {flag} (below {HV_EVENT_FLAG_COUNT}), "
                                    f"RsvdZ {reserved:#x}")
        return self._forwarded(connection_id, self.signal_event(connection_id, flag))

    @staticmethod
    def _forwarded(connection_id: int, status: int) -> int:
        if status == HV_STATUS_INVALID_CONNECTION_ID:
            raise HypercallRejected(status, f"no port with connection id {connection_id:#x}")
        return status

    # ----- MSRs ---------------------------------------------------------------------------------
    def read_msr(self, msr: int) -> int:
        if msr == HV_X64_MSR_GUEST_OS_ID:
            return self.guest_os_id
        if msr == HV_X64_MSR_HYPERCALL:
            return self.hypercall_msr
        return 0  # HV_X64_MSR_VP_INDEX: one virtual processor per partition

    def write_msr(self, msr: int, value: int) -> None:
        """The guest OS ID, and the hypercall page (TLFS: enabling it needs a guest OS ID; the
        page then holds a VMCALL; RET sequence the guest calls)."""
        if msr == HV_X64_MSR_GUEST_OS_ID:
            self.guest_os_id = value
            if not value:
                self.hypercall_msr &= ~HV_X64_MSR_HYPERCALL_ENABLE
        elif msr == HV_X64_MSR_HYPERCALL:
            self._hypercall_page(value)

    def _hypercall_page(self, value: int) -> None:
        page = value & ~0xFFF
        if value & HV_X64_MSR_HYPERCALL_ENABLE:
            if not self.guest_os_id or not self.memory.contains(page, PAGE_SIZE):
                self.rejections["hypercall page refused"] += 1
                return
            self.memory.write(page, HYPERCALL_PAGE_CODE)
        self.hypercall_msr = value & (~0xFFF | HV_X64_MSR_HYPERCALL_ENABLE)

    def summary(self) -> str:
        """One line for reports: calls made and refusals, by status."""
        made = ", ".join(f"{name} x{count}" for name, count in sorted(self.calls.items()))
        refused = ", ".join(f"{name} x{count}" for name, count in sorted(self.rejections.items()))
        return f"hypercalls: {made or 'none'}; rejected: {refused or 'none'}"
