"""The parent (root) partition of the micro hypervisor: a separate OS process that owns every
device model, as Hyper-V's root partition owns the drivers and the virtualization service
providers (VSPs).

The hypervisor starts it as ``python -m hypervisors.micro.parent CONTROL_FD``. For each child
partition it receives the channel (a socket that only says the hypervisor lives, a shared-memory
slot and its two eventfd doorbells, slot.py) and the child's RAM memfd (SCM_RIGHTS) and runs
a worker thread that serves that child's intercept messages with the same device classes the
monolithic hypervisor runs in-process (crosvm's ProxyDevice pattern: one implementation, two
placements), and its VMBus messages with the VMBus server. Child RAM is touched only through the
GPADL-granted accessor; a child with no VMBus traffic never has any of its pages mapped here.
"""
from __future__ import annotations

import os
import signal
import socket
import tempfile
import threading
import traceback

from hypervisors.loaded_modules import loaded_modules
from hypervisors.micro.parent import device_state, gpadl, vsp
from hypervisors.micro.slot import (
    REPLY_CAPACITY,
    REQ_LEN,
    REQ_SEQ,
    Side,
    SlotEnd,
    check_slot,
    slot_mode,
)
from hypervisors.micro.wire import (
    ALL_MASKED,
    COUNTING,
    HEADER,
    INPUT_ALIVE,
    INT_OUTPUT,
    IO_READ,
    IO_WRITE,
    ISA_LINES,
    MAX_PAYLOAD,
    MORE,
    NO_DEADLINE,
    PORT_SIZES,
    RAISED,
    RECONFIGURED,
    REPLY,
    Control,
    MalformedRecord,
    Message,
    Op,
    PartitionConfig,
    Record,
    pack,
    unpack_record,
)
from vmm.bus import Bus
from vmm.clock import VirtualClock
from vmm.devices.faults import inject_fault
from vmm.pc.board import PcBoard
from vmm.pc.host_input import ScriptedInput

HV_STATUS_SUCCESS = 0x0000
HV_STATUS_INVALID_CONNECTION_ID = 0x0012
DEFAULT_DISK_SIZE = 1 << 20
CONTROL_RECORD_MAX = 1 << 20
CHANNEL_FDS = 5        # socket, RAM, slot, doorbell to the parent, doorbell to the hypervisor
ALL_ONES = 0xFFFFFFFF
REPLY_ROOM = REPLY_CAPACITY - HEADER.size - ISA_LINES.size   # what notifications may fill


def port_layout(pio: Bus, mmio: Bus) -> bytes:
    """The port windows, one 'base length name' line each, then the MMIO windows as
    'mBASE length name', for the hypervisor's proxies."""
    return "\n".join([f"{base} {length} {device.name}" for base, length, device in pio.entries()]
                     + [f"m{base} {length} {device.name}"
                        for base, length, device in mmio.entries()]).encode()


class PartitionWorker:
    """Serves one child partition's channel: device intercepts, VMBus messages and events."""

    def __init__(self, partition_id: int, link: SlotEnd, ram_fd: int, config: PartitionConfig):
        self.partition_id = partition_id
        self.link = link
        self.clock = VirtualClock()
        self.flags = 0
        self.isa_levels = self.isa_rises = self.isa_sent = 0
        self.outbox: list[tuple[int, int, int, bytes]] = []
        self.lock = threading.Lock()
        self.failed = False
        self.mmio = Bus("mmio")
        self.board = PcBoard(Bus("pio"), self.clock, self._raised, self._reconfigured,
                             self.console, self._guest_exit, on_reset=self._guest_reset,
                             drives=config.drives, ram_size=config.ram_size, mmio=self.mmio)
        self.board.a20.on_change = self._a20
        self.board.isa_listeners.append(self._isa_irq)
        self.input = ScriptedInput(self.board.uart, config.input_data, self.clock,
                                   lambda: self.board.last_output_ns, self._input_done)
        self.scripted = bool(config.input_data)
        self.board.uart.before_read = self.input.poll
        if config.fault_device:
            inject_fault(self.board.pio, config.fault_device)
        self.server = self._vmbus_server(ram_fd, config)
        self.handlers = {Op.ACKNOWLEDGE: self._acknowledge, Op.UPDATE_TIMERS: self._update_timers,
                         Op.POLL_INPUT: self._poll_input, Op.POST_MESSAGE: self._post_message,
                         Op.SIGNAL_EVENT: self._signal_event, Op.DRAIN: self._drain,
                         Op.SAVE_DEVICES: self._save_devices,
                         Op.RESTORE_DEVICES: self._restore_devices,
                         Op.MMIO_READ: self._mmio_read, Op.MMIO_WRITE: self._mmio_write}

    def _vmbus_server(self, ram_fd: int, config: PartitionConfig):
        """The VMBus server with its VSPs; child RAM reaches it only as the GPADL accessor."""
        memory = gpadl.GrantedMemory(ram_fd, config.ram_size)
        return vsp.VmbusServer(self.partition_id, memory, self.post_to_child, self.signal_child,
                               config.disk_image, self.console)

    # ----- what devices and VSPs call ------------------------------------------------------------
    def console(self, data: bytes) -> None:
        with self.lock:
            last = self.outbox[-1] if self.outbox else None
            if last and last[0] == Record.OUTPUT and len(last[3]) + len(data) <= MAX_PAYLOAD:
                self.outbox[-1] = (Record.OUTPUT, 0, 0, self.outbox[-1][3] + data)
            else:
                self.outbox.append((Record.OUTPUT, 0, 0, bytes(data)))

    def post_to_child(self, sint: int, message_type: int, payload: bytes) -> None:
        with self.lock:
            self.outbox.append((Record.POST, sint, message_type, bytes(payload)))

    def signal_child(self, connection_id: int) -> None:
        with self.lock:
            self.outbox.append((Record.SIGNAL, self.server.message_sint, connection_id, b""))

    def _guest_exit(self, status: int) -> None:
        with self.lock:
            self.outbox.append((Record.GUEST_EXIT, 0, status, b""))

    def _guest_reset(self) -> None:
        with self.lock:
            self.outbox.append((Record.RESET, 0, 0, b""))

    def _a20(self, enabled: bool) -> None:
        with self.lock:
            self.outbox.append((Record.A20, 0, int(enabled), b""))

    def _input_done(self) -> None:
        with self.lock:
            self.outbox.append((Record.INPUT_DONE, 0, 0, b""))

    def _raised(self) -> None:
        self.flags |= RAISED

    def _isa_irq(self, irq: int, level: bool) -> None:
        """An ISA IRQ line changed: the hypervisor's IOAPIC hears of it with the reply."""
        bit = 1 << irq
        if level and not self.isa_levels & bit:
            self.isa_rises |= bit
        self.isa_levels = self.isa_levels | bit if level else self.isa_levels & ~bit

    def _reconfigured(self) -> None:
        self.flags |= RECONFIGURED

    # ----- the channel ---------------------------------------------------------------------------
    def serve(self) -> None:
        """Answer requests until the hypervisor closes the channel, or until a request cannot be
        framed (garbage or an oversized record): a FAULT and a REPLY say why, and the channel
        ends."""
        seen = 0
        self.link.pin()
        try:
            while True:
                seen = self.link.wait_for_change(REQ_SEQ, seen)
                try:
                    self._serve(seen)
                except MalformedRecord as exc:
                    self.failed = True
                    self._notify_fault(f"the channel ends: {exc}")
                    self._reply(seen, ALL_ONES)
                    return
        except (EOFError, OSError):
            return
        finally:
            self.link.close()

    def _serve(self, seq: int) -> None:
        """Answer the request published as ``seq``; MalformedRecord if it cannot be framed.
        Most requests are a header alone, read straight from the slot (copied out at once:
        the child may rewrite the slot)."""
        link = self.link
        if link.words[REQ_LEN] == HEADER.size:
            op, size, aux, value, time, length = HEADER.unpack_from(link.map, link.in_offset)
            if not length:
                self._reply(seq, self._answer(op, size, aux, value, time, b""))
                return
        self._reply(seq, self._answer(*self._request()))

    def _request(self) -> Message:
        """The one record in the request area (copied out: the child may rewrite the slot)."""
        start, end = self.link.incoming(REQ_LEN)
        message, after = unpack_record(self.link.map, start, end)
        if after != end:
            raise MalformedRecord(f"{end - after} bytes follow the record")
        return message

    def _answer(self, op: int, size: int, aux: int, value: int, time: int,
                payload: bytes) -> int:
        """The request's result: all-ones when it is refused or the partition has failed."""
        if time > self.clock.now_ns():
            self.clock.set(time)
        if op == IO_READ or op == IO_WRITE:
            return self._port(op, size, aux, value)
        handler = self.handlers.get(op)
        if handler is None:
            self._notify_fault(f"refused: op {op} is not a request on a partition's channel")
        elif (op == Op.MMIO_READ or op == Op.MMIO_WRITE) and (
                size not in PORT_SIZES or op == Op.MMIO_WRITE and len(payload) != size):
            self._notify_fault(f"refused: a {size}-byte MMIO access at {value:#x} "
                               "(the channel carries 1, 2 or 4 bytes)")
        elif not self.failed:
            try:
                return handler(Message(op, size, aux, value, time, payload))
            except Exception as exc:  # noqa: BLE001 - a driver fault stays in this partition
                self._fault(f"request {op}", exc)
        return ALL_ONES

    def _port(self, op: int, size: int, port: int, value: int) -> int:
        """IN (IO_READ) or OUT (IO_WRITE) on the board's port bus."""
        if size not in PORT_SIZES:
            self._notify_fault(f"refused: a {size}-byte access to port {port:#x} "
                               "(IN and OUT move 1, 2 or 4 bytes)")
        elif not self.failed:
            try:
                if op == IO_READ:
                    return self.board.pio.read(port, size)
                self.board.pio.write(port, size, value)
                return 0
            except Exception as exc:  # noqa: BLE001 - a driver fault stays in this partition
                hit = self.board.pio.lookup(port)
                self._fault(f"{hit[0].name} (port {port:#x})" if hit else f"port {port:#x}",
                            exc)
        return ALL_ONES

    def _fault(self, where: str, exc: Exception) -> None:
        self.failed = True
        frame = traceback.extract_tb(exc.__traceback__)[-1]
        self._notify_fault(f"{where}: {type(exc).__name__}: {exc} "
                           f"(raised at {os.path.basename(frame.filename)}:{frame.lineno})")

    def _notify_fault(self, text: str) -> None:
        """A FAULT record for the next reply. A refused request leaves the devices as they
        were; a device failure or an unframeable channel (``failed``) ends the partition."""
        with self.lock:
            self.outbox.append((Record.FAULT, 0, 0, text.encode()[:MAX_PAYLOAD]))

    def _reply(self, seq: int, value: int) -> None:
        """The notifications that fit, then the REPLY with the mirrored state, into the slot."""
        state, deadline = self._state_and_deadline()
        lines = b""
        if self.isa_rises or self.isa_levels != self.isa_sent:
            lines = ISA_LINES.pack(self.isa_levels, self.isa_rises)
            self.isa_sent, self.isa_rises = self.isa_levels, 0
        start = offset = self.link.out_offset
        if self.outbox:
            offset = self._put_notifications(offset)
            state |= MORE if self.outbox else 0
        self._put(offset, REPLY, state, 0, value, deadline, lines)
        self.link.publish(seq, offset + HEADER.size + len(lines) - start)

    def _state_and_deadline(self) -> tuple[int, int]:
        """The wire.State bits and the next timer deadline (NO_DEADLINE if none) to mirror."""
        pic, pit, host_input = self.board.pic, self.board.pit, self.input
        state, self.flags = self.flags, 0
        input_deadline, deadline = host_input.next_deadline_ns(), pit.next_deadline_ns()
        if pic.has_interrupt():
            state |= INT_OUTPUT
        if pic.all_masked():
            state |= ALL_MASKED
        if deadline is not None or input_deadline is not None or pit.counting():
            state |= COUNTING     # (an IRQ0 deadline means counter 0 counts)
        if host_input.alive():
            state |= INPUT_ALIVE
        if input_deadline is not None and (deadline is None or input_deadline < deadline):
            deadline = input_deadline
        return state, NO_DEADLINE if deadline is None else deadline

    def _put_notifications(self, offset: int) -> int:
        """Write queued notifications while they fit; the rest wait for the next reply."""
        end = self.link.out_offset + REPLY_ROOM
        with self.lock:
            records = self.outbox
            sent = 0
            for op, aux, value, data in records:
                if offset + HEADER.size + len(data) > end:
                    break
                offset = self._put(offset, op, 0, aux, value, 0, data)
                sent += 1
            self.outbox = records[sent:]
        return offset

    def _put(self, offset: int, op: int, size: int, aux: int, value: int, time: int,
             payload: bytes) -> int:
        slot = self.link.map
        HEADER.pack_into(slot, offset, op, size, aux, value & 0xFFFFFFFF, time, len(payload))
        offset += HEADER.size
        if payload:
            slot[offset:offset + len(payload)] = payload
        return offset + len(payload)

    # ----- requests ------------------------------------------------------------------------------
    def _mmio_read(self, message: Message) -> int:
        return self.mmio.read(message.value, message.size)

    def _mmio_write(self, message: Message) -> int:
        self.mmio.write(message.value, message.size, int.from_bytes(message.payload, "little"))
        return 0

    def _acknowledge(self, message: Message) -> int:
        return self.board.pic.acknowledge()

    def _update_timers(self, message: Message) -> int:
        self.board.pit.update()
        self.input.update()
        return 0

    def _poll_input(self, message: Message) -> int:
        self.input.poll()
        return 0

    def _drain(self, message: Message) -> int:
        return 0

    def _save_devices(self, message: Message) -> int:
        try:
            blob = device_state.save(self)
        except device_state.Refused as exc:
            return self._refuse(exc)
        with self.lock:
            self.outbox.append((Record.DEVICE_STATE, 0, 0, blob))
        return 0

    def _restore_devices(self, message: Message) -> int:
        try:
            device_state.restore(self, message.payload)
        except device_state.Refused as exc:
            return self._refuse(exc)
        return 0

    def _refuse(self, exc: Exception) -> int:
        """A REFUSED record for the next reply; the devices are as they were."""
        with self.lock:
            self.outbox.append((Record.REFUSED, 0, 0, str(exc).encode()[:MAX_PAYLOAD]))
        return 0xFFFFFFFF

    def _post_message(self, message: Message) -> int:
        message_type = int.from_bytes(message.payload[:4], "little")
        try:
            self.server.on_post_message(message.value, message_type, message.payload[4:])
        except vsp.UnknownConnection:
            return HV_STATUS_INVALID_CONNECTION_ID
        return HV_STATUS_SUCCESS

    def _signal_event(self, message: Message) -> int:
        try:
            self.server.on_signal_event(message.value, message.aux)
        except vsp.UnknownConnection:
            return HV_STATUS_INVALID_CONNECTION_ID
        return HV_STATUS_SUCCESS


class RootPartition:
    """The parent process's main loop: partitions arrive on the control socket."""

    def __init__(self, control: socket.socket):
        self.control = control
        self.scratch_disks: list[str] = []

    def serve(self) -> None:
        try:
            while True:
                data, fds, _flags, _addr = socket.recv_fds(self.control, CONTROL_RECORD_MAX,
                                                           CHANNEL_FDS)
                if not data:
                    return
                self.control.send(self._control(data, fds))
        finally:
            for path in self.scratch_disks:
                os.unlink(path)

    def _control(self, data: bytes, fds: list[int]) -> bytes:
        op, _size, _aux, partition_id, _time, _length = HEADER.unpack_from(data)
        if op == Control.MODULES:
            return pack(Record.REPLY, payload=loaded_modules().encode())
        try:
            worker = self._worker(partition_id, data, fds)
        except Exception as exc:
            return pack(Record.FAULT, payload=f"{type(exc).__name__}: {exc}".encode())
        threading.Thread(target=worker.serve, name=f"partition-{partition_id}",
                         daemon=True).start()
        return pack(Record.REPLY, payload=port_layout(worker.board.pio, worker.mmio))

    def _worker(self, partition_id: int, data: bytes, fds: list[int]) -> PartitionWorker:
        """A worker for a new partition; its descriptors are closed if it cannot be built."""
        try:
            if len(fds) != CHANNEL_FDS:
                raise ValueError(f"a partition needs {CHANNEL_FDS} descriptors, not {len(fds)}")
            channel_fd, ram_fd, slot_fd, to_parent, to_hypervisor = fds
            check_slot(slot_fd)
            slot_mode(slot_fd)
            config = PartitionConfig.decode(data[HEADER.size:])
            link = SlotEnd(Side.PARENT, slot_fd, to_hypervisor, to_parent,
                           socket.socket(fileno=channel_fd))
        except Exception:
            for fd in fds:
                os.close(fd)
            raise
        try:
            if not config.disk_image:
                config = config._replace(disk_image=self._scratch_disk())
            return PartitionWorker(partition_id, link, ram_fd, config)
        except Exception:
            link.close()
            os.close(ram_fd)
            raise

    def _scratch_disk(self) -> str:
        """A zero-filled temporary disk image, owned by this process, when none was given."""
        fd, path = tempfile.mkstemp(prefix="trapvisor-disk-", suffix=".img")
        os.ftruncate(fd, DEFAULT_DISK_SIZE)
        os.close(fd)
        self.scratch_disks.append(path)
        return path


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the hypervisor's to handle
    control = socket.socket(fileno=int(argv[0]))
    RootPartition(control).serve()
    return 0

