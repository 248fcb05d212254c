"""Host input for a guest's UART: a scripted byte string fed as the receive FIFO drains."""
from __future__ import annotations


class ScriptedInput:
    """Feeds ``data`` into the UART whenever its receive FIFO has room (polled between slices)."""

    def __init__(self, uart, data: bytes):
        self.uart = uart
        self.data = bytearray(data)
        self.poll()

    def poll(self) -> None:
        room = self.uart.can_receive()
        if room > 0 and self.data:
            chunk, self.data = bytes(self.data[:room]), self.data[room:]
            self.uart.receive(chunk)

    def alive(self) -> bool:
        return bool(self.data)
