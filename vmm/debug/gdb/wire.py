"""The wire layer of the GDB remote serial protocol (GDB manual, "Overview" and "Packets"):
$BODY#CHECKSUM framing, '+'/'-' acknowledgements and QStartNoAckMode, binary escapes, Ctrl-C.

``Link`` owns one gdb connection: a reader thread splits the byte stream into packets, acks and
interrupts, so a Ctrl-C or a hang-up reaches the stub while the guest runs in the serving thread.
"""
from __future__ import annotations

import queue
import socket
import threading
from typing import Callable

PACKET_SIZE = 0x4000
ACK_TIMEOUT_S = 2.0
RETRANSMITS = 3
ESCAPED = b"#$}*"


def checksum(body: bytes) -> bytes:
    return b"%02x" % (sum(body) & 0xFF)


def frame(body: bytes) -> bytes:
    return b"$" + body + b"#" + checksum(body)


def escape(data: bytes) -> bytes:
    """Binary data inside a packet: '#', '$', '}' and '*' become '}' followed by byte ^ 0x20."""
    return b"".join(b"}" + bytes([b ^ 0x20]) if b in ESCAPED else bytes([b]) for b in data)


def unescape(data: bytes) -> bytes:
    out, it = bytearray(), iter(data)
    for byte in it:
        out.append(next(it, 0) ^ 0x20 if byte == 0x7D else byte)
    return bytes(out)


class FrameParser:
    """Splits gdb's byte stream into ("packet" | "corrupt", body), ("ack", b"+" | b"-") and
    ("interrupt", b"") events; anything else between packets is line noise and is dropped."""

    def __init__(self):
        self.buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[str, bytes]]:
        self.buffer += data
        events = []
        while self.buffer:
            if self.buffer[0] != ord("$"):
                first = self.buffer.pop(0)
                if first in b"+-":
                    events.append(("ack", bytes([first])))
                elif first == 0x03:
                    events.append(("interrupt", b""))
                continue
            end = self.buffer.find(b"#")
            if end < 0 or len(self.buffer) < end + 3:
                break
            body, given = bytes(self.buffer[1:end]), bytes(self.buffer[end + 1:end + 3]).lower()
            del self.buffer[:end + 3]
            events.append(("packet" if given == checksum(body) else "corrupt", body))
        return events


class Link:
    """One gdb connection. A reader thread acknowledges and queues packets, forwards Ctrl-C and
    hang-ups; the serving thread takes packets with ``receive`` and answers with ``send``."""

    def __init__(self, sock: socket.socket, on_interrupt: Callable[[], None]):
        self.sock = sock
        self.on_interrupt = on_interrupt
        self.packets: queue.Queue[bytes | None] = queue.Queue()
        self.acks: queue.Queue[bytes] = queue.Queue()
        self.write_lock = threading.Lock()
        self.ack_incoming = True    # we '+' what gdb sends, until QStartNoAckMode
        self.await_acks = True      # gdb '+'s what we send, until it has acked our OK to it
        self.acks_ending = False
        self.closed = False
        threading.Thread(target=self._read, name="gdb-reader", daemon=True).start()

    def receive(self) -> bytes | None:
        """The next packet; None once gdb has gone."""
        return self.packets.get()

    def send(self, body: str | bytes) -> None:
        data = frame(body.encode("latin-1") if isinstance(body, str) else body)
        for _ in range(RETRANSMITS):
            self._write(data)
            if not self.await_acks or self._acked():
                break
        if self.acks_ending:
            self.await_acks = self.acks_ending = False

    def console(self, text: str) -> None:
        """Text for gdb's console: 'O' packets (while the target runs, or before a qRcmd's OK)."""
        data = text.encode()
        for start in range(0, len(data), PACKET_SIZE // 4):
            self.send("O" + data[start:start + PACKET_SIZE // 4].hex())

    def close(self) -> None:
        self.closed = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()

    def _acked(self) -> bool:
        try:
            return self.acks.get(timeout=ACK_TIMEOUT_S) != b"-"
        except queue.Empty:
            return True  # a gdb that does not ack is not waited for

    def _write(self, data: bytes) -> None:
        with self.write_lock:
            try:
                self.sock.sendall(data)
            except OSError:
                self.closed = True

    def _read(self) -> None:
        parser = FrameParser()
        try:
            while data := self.sock.recv(PACKET_SIZE):
                for kind, body in parser.feed(data):
                    self._event(kind, body)
        except OSError:
            pass
        self.closed = True
        self.acks.put(b"")
        self.packets.put(None)
        self.on_interrupt()  # a hang-up stops a running guest too; the stub decides what next

    def _event(self, kind: str, body: bytes) -> None:
        if kind == "ack":
            self.acks.put(body)
        elif kind == "interrupt":
            self.on_interrupt()
        else:
            if self.ack_incoming:
                self._write(b"+" if kind == "packet" else b"-")
            if kind == "packet":
                if body == b"QStartNoAckMode":
                    self.ack_incoming, self.acks_ending = False, True
                self.packets.put(body)
