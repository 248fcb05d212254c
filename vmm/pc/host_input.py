"""Host input for a guest's UART: a script typed like a person at the console, or the terminal's
stdin, fed into the receive FIFO as it drains. Input moves only at points fixed by the guest's
own execution (its UART reads, virtual time), never at arbitrary slice ends, so runs replay
exactly."""
from __future__ import annotations

import queue
import threading
from collections import deque
from typing import BinaryIO, Callable

from vmm.devices.uart16550 import IER_ERBFI
from vmm.snapshot.state import capture, restore

# How long (virtual time) an interrupt-driven console must have printed nothing before the next
# line is typed: its prompt is then on the screen. Longer than the quiet stretches of a boot
# (xv6: 63 ms between "xv6..." and "cpu0: starting", measured), short enough not to matter.
TYPING_PAUSE_NS = 100_000_000


class ScriptedInput:
    """Types ``data`` into the UART a line at a time, once the guest is ready for the line:

    - a guest that polls (receive interrupt off) gets the next line when it looks at its UART
      and the receiver is empty (the old rule: input waits for the guest to look);
    - an interrupt-driven console (IER.ERBFI on, like xv6's) gets it when it has printed
      nothing for TYPING_PAUSE_NS of virtual time (``quiet_since()``: its last output), as
      QEMU's reference transcripts were typed after each prompt. Meanwhile the script is a
      timer, so virtual time is counted while it waits. When the console has been quiet that
      long after the last line, the session is over: ``on_done()`` (the run ends, as the
      reference run quits at its last prompt; an interactive OS would otherwise run forever)."""

    def __init__(self, uart, data: bytes, clock=None, quiet_since: Callable[[], int] = int,
                 on_done: Callable[[], None] | None = None):
        self.uart = uart
        self.clock = clock
        self.quiet_since = quiet_since
        self.on_done = on_done
        self.lines = deque(bytes(data).splitlines(keepends=True))
        self.typing = bytearray()
        self.done = not self.lines

    def save_state(self) -> dict:
        """What remains to be typed (the script itself is the run's configuration)."""
        return capture(self, ("lines", "typing", "done"))

    def load_state(self, state: dict) -> None:
        restore(self, state, ("lines", "typing", "done"))

    def poll(self) -> None:
        """The guest reads a UART register (or idles): keep typing the line under way, or start
        the next one if a polling guest finds the receiver empty."""
        if not self.typing and self.lines and not self._interrupt_driven() and self._empty():
            self.typing += self.lines.popleft()
        self._feed()

    def _feed(self) -> None:
        room = self.uart.can_receive()
        if room > 0 and self.typing:
            chunk, self.typing = bytes(self.typing[:room]), self.typing[room:]
            self.uart.receive(chunk)

    def _interrupt_driven(self) -> bool:
        return self.clock is not None and bool(self.uart.ier & IER_ERBFI)

    def _empty(self) -> bool:
        return self.uart.receiver_empty()

    # ----- the Timer protocol (vmm.vm.Timer): the pause before each typed line ----------------
    def counting(self) -> bool:
        return self.next_deadline_ns() is not None

    def next_deadline_ns(self) -> int | None:
        if self.done or self.typing or not self._interrupt_driven():
            return None
        if not self.lines and not self._empty():
            return None  # the last line is still being read
        return self.quiet_since() + TYPING_PAUSE_NS

    def update(self) -> None:
        deadline = self.next_deadline_ns()
        if deadline is None or self.clock.now_ns() < deadline:
            return
        if self.lines:
            self.typing += self.lines.popleft()
            self._feed()
        else:
            self.done = True
            if self.on_done is not None:
                self.on_done()

    def alive(self) -> bool:
        return bool(self.lines or self.typing)


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
            self.typing += chunk
        self._feed()

    def alive(self) -> bool:
        return self.open or bool(self.typing)
