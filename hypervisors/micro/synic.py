"""The synthetic interrupt controller (SynIC) of one virtual processor, as the Hyper-V TLFS
(chapter "Inter-Partition Communication") and Linux arch/x86/include/asm/hyperv-tlfs.h define it.

The child programs it with WRMSR: SCONTROL enables it, SIMP points at the message page (16 slots
of one 256-byte hv_message, one per SINT), SIEFP at the event-flags page (16 x 2048 flag bits),
SINTn holds the vector of synthetic interrupt n (bits 7:0) and its mask (bit 16), and a write to
EOM tells the hypervisor a slot was freed. Messages to a busy slot are queued and the slot's
MessageFlags.MessagePending bit is set; EOM delivers the next one.
"""
from __future__ import annotations

import collections
import struct
from typing import Callable

HV_X64_MSR_SCONTROL = 0x40000080
HV_X64_MSR_SVERSION = 0x40000081
HV_X64_MSR_SIEFP = 0x40000082
HV_X64_MSR_SIMP = 0x40000083
HV_X64_MSR_EOM = 0x40000084
HV_X64_MSR_SINT0 = 0x40000090
HV_SYNIC_SINT_COUNT = 16
HV_SYNIC_VERSION_1 = 1
HV_SYNIC_CONTROL_ENABLE = 1 << 0
HV_SYNIC_SIMP_ENABLE = 1 << 0
HV_SYNIC_SIEFP_ENABLE = 1 << 0
HV_SYNIC_SINT_MASKED = 1 << 16
HV_SYNIC_SINT_AUTO_EOI = 1 << 17
HV_SYNIC_SINT_POLLING = 1 << 18
HV_SYNIC_SINT_WRITABLE = 0xFF | HV_SYNIC_SINT_MASKED | HV_SYNIC_SINT_AUTO_EOI | HV_SYNIC_SINT_POLLING
HV_MESSAGE_SIZE = 256
HV_MESSAGE_PAYLOAD_BYTE_COUNT = 240
HV_EVENT_FLAGS_COUNT = 256 * 8
HVMSG_NONE = 0
HV_MESSAGE_FLAG_PENDING = 1
HV_MESSAGE_HEADER = struct.Struct("<IBBHQ")   # MessageType, PayloadSize, MessageFlags, Rsvd, Port
PAGE_MASK = ~0xFFF & 0xFFFFFFFFFFFFFFFF
SYNIC_MSRS = frozenset((HV_X64_MSR_SCONTROL, HV_X64_MSR_SVERSION, HV_X64_MSR_SIEFP,
                        HV_X64_MSR_SIMP, HV_X64_MSR_EOM,
                        *range(HV_X64_MSR_SINT0, HV_X64_MSR_SINT0 + HV_SYNIC_SINT_COUNT)))
QUEUE_DEPTH = 16            # undelivered messages per SINT before a PostMessage is refused


class SynIC:
    """One vCPU's SynIC over the child's RAM. ``memory`` is the child's GuestMemory;
    ``kick`` asks the vCPU to leave the guest so a raised vector can be injected."""

    def __init__(self, memory, kick: Callable[[], None]):
        self.memory = memory
        self.kick = kick
        self.scontrol = 0
        self.siefp = 0
        self.simp = 0
        self.sint = [HV_SYNIC_SINT_MASKED] * HV_SYNIC_SINT_COUNT
        self.queues: list[collections.deque] = [collections.deque()
                                                for _ in range(HV_SYNIC_SINT_COUNT)]
        self.pending: set[int] = set()
        self.delivered = 0
        self.rejected_pages = 0

    # ----- MSRs ---------------------------------------------------------------------------------
    def read_msr(self, msr: int) -> int:
        if msr == HV_X64_MSR_SVERSION:
            return HV_SYNIC_VERSION_1
        if msr == HV_X64_MSR_SCONTROL:
            return self.scontrol
        if msr == HV_X64_MSR_SIEFP:
            return self.siefp
        if msr == HV_X64_MSR_SIMP:
            return self.simp
        if msr == HV_X64_MSR_EOM:
            return 0
        return self.sint[msr - HV_X64_MSR_SINT0]

    def write_msr(self, msr: int, value: int) -> None:
        if msr == HV_X64_MSR_SCONTROL:
            self.scontrol = value & HV_SYNIC_CONTROL_ENABLE
        elif msr == HV_X64_MSR_SIMP:
            self.simp = self._page_register(value)
        elif msr == HV_X64_MSR_SIEFP:
            self.siefp = self._page_register(value)
        elif msr == HV_X64_MSR_EOM:
            pass
        elif msr != HV_X64_MSR_SVERSION:
            self.sint[msr - HV_X64_MSR_SINT0] = value & HV_SYNIC_SINT_WRITABLE
        self.flush()

    def _page_register(self, value: int) -> int:
        """SIMP/SIEFP: page GPA in bits 63:12, enable in bit 0. A page outside the child's RAM
        is refused (kept disabled) and counted: the hypervisor never writes outside it."""
        value &= PAGE_MASK | 1
        if value & 1 and not self.memory.contains(value & PAGE_MASK, 0x1000):
            self.rejected_pages += 1
            return value & PAGE_MASK
        return value

    @property
    def enabled(self) -> bool:
        return bool(self.scontrol & HV_SYNIC_CONTROL_ENABLE)

    # ----- messages -----------------------------------------------------------------------------
    def queue_full(self, sint: int) -> bool:
        return len(self.queues[sint]) >= QUEUE_DEPTH

    def post(self, sint: int, message_type: int, payload: bytes, port: int = 0) -> None:
        """Queue an hv_message for SINT ``sint`` and deliver what the slot can take."""
        if not 0 <= sint < HV_SYNIC_SINT_COUNT or len(payload) > HV_MESSAGE_PAYLOAD_BYTE_COUNT:
            raise ValueError(f"bad hv_message: SINT {sint}, {len(payload)} payload bytes")
        self.queues[sint].append((message_type, bytes(payload), port))
        self._deliver(sint)

    def flush(self) -> None:
        """After EOM or any reconfiguration: move queued messages into free slots."""
        for sint in range(HV_SYNIC_SINT_COUNT):
            if self.queues[sint]:
                self._deliver(sint)

    def _deliver(self, sint: int) -> None:
        if not (self.enabled and self.simp & HV_SYNIC_SIMP_ENABLE):
            return
        slot = (self.simp & PAGE_MASK) + sint * HV_MESSAGE_SIZE
        if self.memory.read_u32(slot) != HVMSG_NONE:
            flags = self.memory.read(slot + 5, 1)[0]
            self.memory.write(slot + 5, bytes((flags | HV_MESSAGE_FLAG_PENDING,)))
            return
        message_type, payload, port = self.queues[sint].popleft()
        flags = HV_MESSAGE_FLAG_PENDING if self.queues[sint] else 0
        header = HV_MESSAGE_HEADER.pack(message_type, len(payload), flags, 0, port)
        self.memory.write(slot, header + payload.ljust(HV_MESSAGE_PAYLOAD_BYTE_COUNT, b"\0"))
        self.delivered += 1
        self._assert(sint)

    # ----- events -------------------------------------------------------------------------------
    def signal(self, sint: int, flag: int) -> None:
        """Set event flag ``flag`` of SINT ``sint`` in the SIEF page; interrupt if it was clear."""
        if not (self.enabled and self.siefp & HV_SYNIC_SIEFP_ENABLE):
            return
        if not 0 <= sint < HV_SYNIC_SINT_COUNT or not 0 <= flag < HV_EVENT_FLAGS_COUNT:
            raise ValueError(f"bad event: SINT {sint}, flag {flag}")
        address = (self.siefp & PAGE_MASK) + sint * HV_MESSAGE_SIZE + flag // 8
        byte = self.memory.read(address, 1)[0]
        bit = 1 << flag % 8
        if not byte & bit:
            self.memory.write(address, bytes((byte | bit,)))
            self._assert(sint)

    # ----- the synthetic interrupt --------------------------------------------------------------
    def _assert(self, sint: int) -> None:
        value = self.sint[sint]
        if not value & HV_SYNIC_SINT_MASKED:
            self.pending.add(value & 0xFF)
            self.kick()

    def has_interrupt(self) -> bool:
        return bool(self.pending)

    def acknowledge(self) -> int:
        """The highest pending vector (the local APIC's priority order)."""
        vector = max(self.pending)
        self.pending.discard(vector)
        return vector
