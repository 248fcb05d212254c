"""The PC/AT keyboard controller (Intel 8042 with IBM's firmware, as in the IBM PC/AT Technical
Reference) at ports 0x60/0x64 with a PS/2 keyboard behind it, the A20 gate it shares with
System Control Port A (0x92, IBM PS/2 "fast A20"), and the CPU reset line both can pulse.
"""
from __future__ import annotations

from collections import deque
from typing import Callable

from vmm.bus import IrqLine
from vmm.snapshot.state import PlainState

DATA_PORT, STATUS_PORT = 0, 4          # offsets in a window based at 0x60

STATUS_OBF, STATUS_IBF, STATUS_SYS, STATUS_A2 = 0x01, 0x02, 0x04, 0x08
STATUS_INH, STATUS_AUXB = 0x10, 0x20   # INH set: keyboard not inhibited
CCB_INT, CCB_INT2, CCB_SYS, CCB_DISABLE_KBD, CCB_DISABLE_AUX, CCB_XLAT = (
    0x01, 0x02, 0x04, 0x10, 0x20, 0x40)
OUTPORT_RESET, OUTPORT_A20, OUTPORT_OBF, OUTPORT_AUXB = 0x01, 0x02, 0x10, 0x20

CMD_READ_CCB, CMD_WRITE_CCB = 0x20, 0x60
CMD_DISABLE_AUX, CMD_ENABLE_AUX, CMD_TEST_AUX = 0xA7, 0xA8, 0xA9
CMD_SELF_TEST, CMD_TEST_KBD, CMD_DISABLE_KBD, CMD_ENABLE_KBD = 0xAA, 0xAB, 0xAD, 0xAE
CMD_READ_OUTPORT, CMD_WRITE_OUTPORT = 0xD0, 0xD1
CMD_WRITE_KBD_OUT, CMD_WRITE_AUX_OUT, CMD_WRITE_AUX = 0xD2, 0xD3, 0xD4
CMD_DISABLE_A20, CMD_ENABLE_A20, CMD_READ_TEST_INPUTS = 0xDD, 0xDF, 0xE0
CMD_PULSE = 0xF0                       # 0xF0-0xFF: pulse output port bits 3:0 that are 0
SELF_TEST_PASSED, INTERFACE_OK = 0x55, 0x00

KBD_ACK, KBD_RESEND, KBD_BAT_OK, KBD_ECHO = 0xFA, 0xFE, 0xAA, 0xEE
KBD_ID = (0xAB, 0x83)                  # MF2 keyboard
PORT_A_RESET, PORT_A_A20 = 0x01, 0x02
# Data-port writes the controller keeps for itself, after these commands.
_TAKES_DATA = {CMD_WRITE_OUTPORT, CMD_WRITE_KBD_OUT, CMD_WRITE_AUX_OUT, CMD_WRITE_AUX}


class A20Gate(PlainState):
    """A20 as the OR of its two drivers, the keyboard controller output port bit 1 and port
    0x92 bit 1. ``on_change(enabled)`` tells the CPU side whenever the combined state changes."""
    STATE = ("drivers",)

    def __init__(self, on_change: Callable[[bool], None] | None = None,
                 enabled: bool = True) -> None:
        self.on_change = on_change
        self.drivers = {"kbc": enabled, "port92": False}

    @property
    def enabled(self) -> bool:
        return any(self.drivers.values())

    def load_state(self, state: dict) -> None:
        """A restored gate tells the CPU side its state, whatever it was before."""
        super().load_state(state)
        if self.on_change is not None:
            self.on_change(self.enabled)

    def drive(self, source: str, level: bool) -> None:
        before = self.enabled
        self.drivers[source] = level
        if self.enabled != before and self.on_change is not None:
            self.on_change(self.enabled)


class I8042(PlainState):
    """Keyboard controller behind a 5-port window at 0x60 (offset 0 data, offset 4 status and
    command; 0x61-0x63 are not the controller's and read all-ones).

    The state a BIOS leaves (this model's power-on): command byte 0x45 (keyboard interrupt,
    system flag, translation), A20 on, keyboard enabled. Scan codes are queued as they should
    reach the guest (set 1, translation is not applied), through ``queue_scancodes``. The input
    buffer is always empty (IBF 0): every write is taken at once. No mouse is attached: aux
    writes (0xD4) are dropped; 0xD3 loops a byte back as aux data (IRQ 12 when enabled).
    """
    STATE = ("ram", "status", "outport", "_controller", "_keyboard", "_output",
             "_pending_command", "_kbd_pending", "_levels", "_last", "scanning")

    def save_state(self) -> dict:
        return {**super().save_state(), "a20": self.a20.save_state()}

    def load_state(self, state: dict) -> None:
        super().load_state(state)
        self.a20.load_state(state["a20"])

    name = "i8042"

    def __init__(self, irq1: IrqLine, irq12: IrqLine | None = None, *,
                 a20: A20Gate | None = None, on_reset: Callable[[], None] | None = None,
                 command_byte: int = CCB_INT | CCB_SYS | CCB_XLAT) -> None:
        self._irq1, self._irq12 = irq1, irq12
        self.a20 = a20 if a20 is not None else A20Gate()
        self.on_reset = on_reset
        self.ram = bytearray(32)
        self.ram[0] = command_byte
        self.status = STATUS_INH | (STATUS_SYS if command_byte & CCB_SYS else 0)
        self.outport = OUTPORT_RESET | (OUTPORT_A20 if self.a20.enabled else 0)
        self._controller = deque()     # (byte, from_aux): replies of the controller itself
        self._keyboard = deque()       # bytes from the keyboard, held while it is disabled
        self._output: tuple[int, bool] | None = None
        self._pending_command: int | None = None
        self._kbd_pending: int | None = None
        self._levels = [False, False]
        self._last = 0
        self.scanning = True           # the keyboard's own enable (0xF4 / 0xF5)

    @property
    def command_byte(self) -> int:
        return self.ram[0]

    def queue_scancodes(self, data: bytes) -> None:
        """Bytes from the keyboard (key presses): IRQ 1 as each reaches the output buffer.
        Dropped while the keyboard has scanning disabled (command 0xF5)."""
        if self.scanning:
            self._keyboard.extend(data)
        self._refill()

    # ----- the window ------------------------------------------------------------------------
    def read(self, offset: int, size: int) -> int:
        if offset == STATUS_PORT:
            return self.status | (STATUS_OBF if self._output else 0) | (
                STATUS_AUXB if self._output and self._output[1] else 0)
        if offset != DATA_PORT:
            return (1 << 8 * size) - 1
        if self._output is None:
            return self._last          # an empty output buffer reads its last byte again
        self._last, self._output = self._output[0], None
        self._set_level(0, False)      # OBF fell: the next byte makes a fresh edge
        self._set_level(1, False)
        self._refill()
        return self._last

    def write(self, offset: int, size: int, value: int) -> None:
        value &= 0xFF
        if offset == STATUS_PORT:
            self.status |= STATUS_A2
            self._command(value)
        elif offset == DATA_PORT:
            self.status &= ~STATUS_A2
            self._data(value)
        self._refill()

    # ----- controller commands ---------------------------------------------------------------
    def _command(self, command: int) -> None:
        self._pending_command = None
        if CMD_READ_CCB <= command < CMD_READ_CCB + 0x20:
            self._reply(self.ram[command & 0x1F])
        elif CMD_WRITE_CCB <= command < CMD_WRITE_CCB + 0x20 or command in _TAKES_DATA:
            self._pending_command = command
        elif command in (CMD_DISABLE_AUX, CMD_ENABLE_AUX, CMD_DISABLE_KBD, CMD_ENABLE_KBD):
            bit = CCB_DISABLE_AUX if command in (CMD_DISABLE_AUX, CMD_ENABLE_AUX) else \
                CCB_DISABLE_KBD
            self._set_ccb(self.ram[0] | bit if command & 1 else self.ram[0] & ~bit)
        elif command == CMD_SELF_TEST:
            self.status |= STATUS_SYS
            self._reply(SELF_TEST_PASSED)
        elif command in (CMD_TEST_KBD, CMD_TEST_AUX, CMD_READ_TEST_INPUTS):
            self._reply(INTERFACE_OK)
        elif command == CMD_READ_OUTPORT:
            self._reply(self._outport_value())
        elif command in (CMD_DISABLE_A20, CMD_ENABLE_A20):
            self._write_outport(self.outport & ~OUTPORT_A20 | (command & 2))
        elif command >= CMD_PULSE and not command & OUTPORT_RESET:
            self._pulse_reset()

    def _data(self, value: int) -> None:
        command, self._pending_command = self._pending_command, None
        if command is None:
            self._keyboard_command(value)
        elif command == CMD_WRITE_OUTPORT:
            self._write_outport(value)
        elif command == CMD_WRITE_KBD_OUT:
            self._controller.append((value, False))
        elif command == CMD_WRITE_AUX_OUT:
            self._controller.append((value, True))
        elif CMD_WRITE_CCB <= command < CMD_WRITE_CCB + 0x20:
            index = command & 0x1F
            if index:
                self.ram[index] = value
            else:
                self._set_ccb(value)

    def _set_ccb(self, value: int) -> None:
        self.ram[0] = value & 0x7F
        self.status = self.status & ~STATUS_SYS | (STATUS_SYS if value & CCB_SYS else 0)

    def _outport_value(self) -> int:
        output = self._output
        return (self.outport & ~(OUTPORT_OBF | OUTPORT_AUXB)
                | (OUTPORT_OBF if output and not output[1] else 0)
                | (OUTPORT_AUXB if output and output[1] else 0))

    def _write_outport(self, value: int) -> None:
        """Bit 1 drives A20; bit 0 is the CPU reset line, active low."""
        self.outport = value & ~(OUTPORT_OBF | OUTPORT_AUXB)
        self.a20.drive("kbc", bool(value & OUTPORT_A20))
        if not value & OUTPORT_RESET:
            self.outport |= OUTPORT_RESET
            self._pulse_reset()

    def _pulse_reset(self) -> None:
        if self.on_reset is not None:
            self.on_reset()

    # ----- the keyboard behind the controller ------------------------------------------------
    def _keyboard_command(self, value: int) -> None:
        """A byte for the keyboard. Two-byte commands (LEDs, typematic, scan code set) take
        their parameter next; the reply bytes queue behind any pending scan codes."""
        pending, self._kbd_pending = self._kbd_pending, None
        if pending is not None:
            self._keyboard.append(KBD_ACK)
            if pending == 0xF0 and value == 0:
                self._keyboard.append(0x02)    # scan code set 2 (the controller translates)
            return
        if value == 0xFF:
            self.scanning = True
        replies = {0xFF: (KBD_ACK, KBD_BAT_OK), 0xF2: (KBD_ACK, *KBD_ID), 0xEE: (KBD_ECHO,)}
        if value in (0xED, 0xF0, 0xF3):
            self._kbd_pending = value
            self._keyboard.append(KBD_ACK)
        elif value in replies:
            self._keyboard.extend(replies[value])
        elif value in (0xF4, 0xF5, 0xF6):
            self.scanning = value != 0xF5
            self._keyboard.append(KBD_ACK)
        else:
            self._keyboard.append(KBD_RESEND)

    # ----- output buffer and IRQs ------------------------------------------------------------
    def _reply(self, value: int) -> None:
        self._controller.append((value, False))

    def _refill(self) -> None:
        """Load the output buffer when empty: controller replies first, then keyboard data
        unless the keyboard is disabled in the command byte."""
        if self._output is None:
            if self._controller:
                self._output = self._controller.popleft()
            elif self._keyboard and not self.ram[0] & CCB_DISABLE_KBD:
                self._output = (self._keyboard.popleft(), False)
        output = self._output
        self._set_level(0, bool(output) and not output[1] and bool(self.ram[0] & CCB_INT))
        self._set_level(1, bool(output) and output[1] and bool(self.ram[0] & CCB_INT2))

    def _set_level(self, which: int, level: bool) -> None:
        line = (self._irq1, self._irq12)[which]
        if level == self._levels[which] or line is None:
            return
        self._levels[which] = level
        line.raise_() if level else line.lower()


class SystemControlPortA(PlainState):
    """Port 0x92: bit 1 fast A20 (through the shared ``A20Gate``), bit 0 fast reset (a 0 -> 1
    write pulses the CPU reset line). The other bits are stored and read back."""
    STATE = ("value",)

    name = "port92"

    def __init__(self, a20: A20Gate, on_reset: Callable[[], None] | None = None) -> None:
        self.a20 = a20
        self.on_reset = on_reset
        self.value = 0

    def read(self, offset: int, size: int) -> int:
        return self.value & ~PORT_A_A20 | (PORT_A_A20 if self.a20.drivers["port92"] else 0)

    def write(self, offset: int, size: int, value: int) -> None:
        value &= 0xFF
        rising_reset = value & PORT_A_RESET and not self.value & PORT_A_RESET
        self.value = value
        self.a20.drive("port92", bool(value & PORT_A_A20))
        if rising_reset and self.on_reset is not None:
            self.on_reset()
