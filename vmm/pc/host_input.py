"""Host input for a guest's UART: a scripted byte string, or the terminal's stdin, fed into the
receive FIFO as it drains. The UART polls its line when the guest reads one of its registers,
and the vCPU while the CPU idles in HLT: never at arbitrary slice ends, so runs replay exactly."""
from __future__ import annotations

import queue
import threading
from typing import BinaryIO


class ScriptedInput:
    """Feeds ``data`` into the UART whenever its receive FIFO has room.

    Nothing is fed before the first poll, so input waits for the guest to look at its UART."""

    def __init__(self, uart, data: bytes):
        self.uart = uart
        self.data = bytearray(data)

    def poll(self) -> None:
        room = self.uart.can_receive()
        if room > 0 and self.data:
            chunk, self.data = bytes(self.data[:room]), self.data[room:]
            self.uart.receive(chunk)

    def alive(self) -> bool:
        return bool(self.data)


class StreamInput(ScriptedInput):
    """Bytes read from a stream (stdin) by a daemon thread; alive until the stream ends."""

    def __init__(self, uart, stream: BinaryIO):
        super().__init__(uart, b"")
        self.chunks: queue.SimpleQueue[bytes] = queue.SimpleQueue()
        self.open = True
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream: BinaryIO) -> None:
        while chunk := stream.read1(4096) if hasattr(stream, "read1") else stream.read(1):
            self.chunks.put(chunk)
        self.chunks.put(b"")

    def poll(self) -> None:
        while True:
            try:
                chunk = self.chunks.get_nowait()
            except queue.Empty:
                break
            self.open = self.open and bool(chunk)
            self.data += chunk
        super().poll()

    def alive(self) -> bool:
        return self.open or bool(self.data)
