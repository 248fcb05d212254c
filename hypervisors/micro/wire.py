"""The message protocol between the micro hypervisor and its parent (root) partition.

Each child partition's channel carries intercept messages (Hyper-V's "intercept" of a port
access, forwarded to the root) and their replies through a shared-memory slot (slot.py); a
control socket carries partition creation with the child's RAM memfd, the slot and its doorbells
as SCM_RIGHTS. Every record is one fixed 20-byte little-endian header (struct-packed, no pickling
on the exit path) plus ``length`` payload bytes:

    op u8 | size u8 | aux u16 | value u32 | time i64 | length u32 | payload[length]

The parent only ever speaks in answer to a request: zero or more notification records (console
bytes, a guest exit, an hv_message or event for the child) and then one REPLY, whose ``size``
field carries the mirrored interrupt-controller state and ``time`` the next timer deadline.
Notifications that do not fit in one reply wait for the next (State.MORE asks for a DRAIN).
"""
from __future__ import annotations

import enum
import struct
from typing import NamedTuple

HEADER = struct.Struct("<BBHIqI")
ISA_LINES = struct.Struct("<HH")  # ISA IRQ levels now, and lines that rose since the last reply
NO_DEADLINE = -1
MAX_PAYLOAD = 1 << 20
PORT_SIZES = frozenset((1, 2, 4))  # the sizes of IN and OUT


class MalformedRecord(ValueError):
    """Bytes that are not one record: the channel cannot be framed past them."""


class OversizedRecord(MalformedRecord):
    """A header announcing more than MAX_PAYLOAD bytes."""


class Op(enum.IntEnum):
    """Requests, hypervisor -> parent, on a partition's channel (MODULES: on the control
    socket only; a partition's channel refuses it)."""
    IO_READ = 1          # size, aux = port                -> value
    IO_WRITE = 2         # size, aux = port, value
    ACKNOWLEDGE = 3      # the CPU's INTA cycle             -> value = vector
    UPDATE_TIMERS = 4    # fire timer edges that are due at ``time``
    POLL_INPUT = 5       # feed host input to the UART (the CPU idles)
    POST_MESSAGE = 6     # value = connection id, payload = message type u32 + message
    SIGNAL_EVENT = 7     # value = connection id, aux = flag number -> value = HV status
    MODULES = 8          # -> payload: the project modules loaded in the parent, one a line
    DRAIN = 9            # nothing to do: the notifications the last reply had no room for
    SAVE_DEVICES = 10    # -> DEVICE_STATE (the partition's device state), or REFUSED
    RESTORE_DEVICES = 11 # payload = a DEVICE_STATE blob to load -> value 0, or REFUSED
    MMIO_READ = 12       # size, value = guest-physical address  -> value
    MMIO_WRITE = 13      # size, value = guest-physical address, payload = the data (LE)


class Record(enum.IntEnum):
    """Records, parent -> hypervisor: notifications first, then exactly one REPLY."""
    REPLY = 0x80         # size = State flags, value = result, time = next deadline or -1;
                         # payload, when the ISA IRQ lines changed: ISA_LINES (levels, rises)
    OUTPUT = 0x81        # payload = bytes the VM's console devices emitted
    GUEST_EXIT = 0x82    # value = status written to the debug-exit port
    POST = 0x83          # aux = SINT, value = message type, payload = message payload
    SIGNAL = 0x84        # aux = SINT, value = event flag number
    FAULT = 0x85         # payload = what failed: a device model raised in the parent
    INPUT_DONE = 0x86    # the typed input script is over and the console has gone quiet
    DEVICE_STATE = 0x87  # payload = the partition's device state (MessagePack, device_state.py)
    REFUSED = 0x88       # payload = why SAVE_DEVICES or RESTORE_DEVICES was refused
    RESET = 0x89         # the guest pulsed the CPU's reset line (i8042 0xFE, port 0x92 bit 0)
    A20 = 0x8A           # value = the A20 gate's new state (1 open, 0 closed: bit 20 masked)


class Control(enum.IntEnum):
    """Requests on the control socket, hypervisor -> parent."""
    CREATE_PARTITION = 1  # value = partition id, payload = PartitionConfig; fds: socket, RAM,
                          # slot, doorbell to the parent, doorbell to the hypervisor (slot.py)
    MODULES = 2           # -> REPLY payload: modules loaded in the parent process


class State(enum.IntFlag):
    """The interrupt and timer state the vCPU loop needs between slices, mirrored per reply."""
    INT_OUTPUT = 1        # the PIC's INT pin is high (an interrupt waits for INTA)
    ALL_MASKED = 2        # no IRQ line can reach the CPU
    COUNTING = 4          # some timer counts: time is observable
    INPUT_ALIVE = 8       # host input may still arrive
    RAISED = 16           # INT rose during this request (the vCPU must leave the guest)
    RECONFIGURED = 32     # a device changed how it interrupts or observes time
    MORE = 64             # notifications remain that did not fit: send DRAIN for them


# The hot ops and flags as plain ints for the exit path (enum and IntFlag arithmetic and
# comparisons cost up to a microsecond per operation).
IO_READ, IO_WRITE, REPLY = int(Op.IO_READ), int(Op.IO_WRITE), int(Record.REPLY)
INT_OUTPUT, ALL_MASKED, COUNTING, INPUT_ALIVE, RAISED, RECONFIGURED, MORE = (
    int(flag) for flag in (State.INT_OUTPUT, State.ALL_MASKED, State.COUNTING, State.INPUT_ALIVE,
                           State.RAISED, State.RECONFIGURED, State.MORE))


class Message(NamedTuple):
    op: int
    size: int
    aux: int
    value: int
    time: int
    payload: bytes


def pack(op: int, size: int = 0, aux: int = 0, value: int = 0, time: int = 0,
         payload: bytes = b"") -> bytes:
    return HEADER.pack(op, size, aux, value & 0xFFFFFFFF, time, len(payload)) + payload


def unpack_record(buffer, offset: int, end: int) -> tuple[Message, int]:
    """The record at ``buffer[offset:end]`` and the offset after it; MalformedRecord if the
    bytes there cannot hold it (its payload is copied out: the buffer may be shared)."""
    if end - offset < HEADER.size:
        raise MalformedRecord(f"a {end - offset}-byte record is shorter than its "
                              f"{HEADER.size}-byte header")
    op, size, aux, value, time, length = HEADER.unpack_from(buffer, offset)
    if length > MAX_PAYLOAD:
        raise OversizedRecord(f"record of {length} payload bytes exceeds {MAX_PAYLOAD}")
    start = offset + HEADER.size
    if start + length > end:
        raise MalformedRecord(f"record announces {length} payload bytes but carries "
                              f"{end - start}")
    payload = buffer[start:start + length] if length else b""
    return Message(op, size, aux, value, time, payload), start + length


class PartitionConfig(NamedTuple):
    """What the parent needs to build a child's devices (sent once, at creation)."""
    ram_size: int
    input_data: bytes
    disk_image: str
    fault_device: str
    drives: tuple[str, ...] = ()    # raw images for the board's IDE channel

    def encode(self) -> bytes:
        disk, fault = self.disk_image.encode(), self.fault_device.encode()
        drives = "\0".join(self.drives).encode()
        return (struct.pack("<QIHHH", self.ram_size, len(self.input_data), len(disk), len(fault),
                            len(drives)) + self.input_data + disk + fault + drives)

    @classmethod
    def decode(cls, data: bytes) -> "PartitionConfig":
        ram_size, *lengths = struct.unpack_from("<QIHHH", data)
        offset = struct.calcsize("<QIHHH")
        fields = []
        for length in lengths:
            fields.append(data[offset:offset + length])
            offset += length
        if offset != len(data):
            raise ValueError("malformed partition configuration")
        drives = tuple(fields[3].decode().split("\0")) if fields[3] else ()
        return cls(ram_size, fields[0], fields[1].decode(), fields[2].decode(), drives)
