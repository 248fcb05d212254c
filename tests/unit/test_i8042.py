"""8042 keyboard controller at 0x60/0x64 and port 0x92, without a CPU.

Status, command byte and output port bits from the IBM PC/AT Technical Reference (keyboard
controller section) and the 8042 command set as OSDev and Linux's i8042 driver use it; PS/2
keyboard replies from the IBM PS/2 keyboard reference (0xFA ACK, 0xAA BAT passed, 0xAB 0x83 ID).
"""
import pytest

from vmm.bus import Bus, IrqLine
from vmm.devices.i8042 import A20Gate, I8042, SystemControlPortA

OBF, IBF, SYS, A2, INH, AUXB = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20


class Board:
    def __init__(self):
        self.irq = []
        self.a20 = []
        self.resets = 0
        gate = A20Gate(self.a20.append)
        self.kbc = I8042(IrqLine(self._irq, 1), IrqLine(self._irq, 12), a20=gate,
                         on_reset=self._reset)
        self.port92 = SystemControlPortA(gate, on_reset=self._reset)
        self.bus = Bus("pio")
        self.bus.insert(self.kbc, 0x60, 5)
        self.bus.insert(self.port92, 0x92, 1)

    def _irq(self, n, level):
        self.irq.append((n, level))

    def _reset(self):
        self.resets += 1

    def outb(self, port, value):
        self.bus.write(port, 1, value)

    def inb(self, port):
        return self.bus.read(port, 1)

    def command(self, value, data=None):
        self.outb(0x64, value)
        if data is not None:
            self.outb(0x60, data)


@pytest.fixture
def b():
    return Board()


def test_bios_left_state(b):
    assert b.inb(0x64) == SYS | INH          # nothing to read, input buffer empty
    b.command(0x20)
    assert b.inb(0x64) & OBF and b.inb(0x60) == 0x45
    assert b.inb(0x64) & OBF == 0
    assert b.inb(0x61) == 0xFF               # not the controller's port


def test_xv6_a20_sequence(b):
    assert b.inb(0x64) & IBF == 0
    b.command(0xD1)
    assert b.inb(0x64) & A2                  # last write was a command
    b.outb(0x60, 0xDF)
    assert b.inb(0x64) & A2 == 0
    assert b.kbc.a20.enabled and b.resets == 0
    b.command(0xD1, 0xDD)                    # A20 off: bit 1 clear
    assert b.a20 == [False] and not b.kbc.a20.enabled


def test_self_test_and_interface_test(b):
    b.command(0xAA)
    assert b.inb(0x60) == 0x55
    b.command(0xAB)
    assert b.inb(0x60) == 0x00


def test_command_byte_write_controls_sys_and_interrupts(b):
    b.command(0x60, 0x00)                    # no interrupts, SYS clear
    assert b.inb(0x64) & SYS == 0
    b.kbc.queue_scancodes(b"\x1e")
    assert b.irq == [] and b.inb(0x64) & OBF
    assert b.inb(0x60) == 0x1E


def test_scancodes_raise_irq1_one_at_a_time(b):
    b.kbc.queue_scancodes(b"\x1e\x9e")       # 'a' make, break (set 1)
    assert b.irq == [(1, True)]
    assert b.inb(0x60) == 0x1E
    assert b.irq == [(1, True), (1, False), (1, True)]   # a new edge for the next byte
    assert b.inb(0x60) == 0x9E
    assert b.irq[-1] == (1, False) and b.inb(0x64) & OBF == 0


def test_disable_keyboard_holds_scancodes(b):
    b.command(0xAD)
    b.kbc.queue_scancodes(b"\x10")
    assert b.inb(0x64) & OBF == 0
    b.command(0x20)
    assert b.inb(0x60) & 0x10                # disable bit in the command byte
    b.command(0xAE)
    assert b.inb(0x60) == 0x10


def test_output_port_read_and_reset_pulse(b):
    b.command(0xD0)
    assert b.inb(0x60) & 0x03 == 0x03        # reset line high (inactive), A20 on
    b.command(0xFE)
    assert b.resets == 1
    b.command(0xFF)                          # pulse no lines
    assert b.resets == 1
    b.command(0xD1, 0x00)                    # reset bit low in the output port
    assert b.resets == 2


def test_controller_reply_comes_before_queued_keys(b):
    b.kbc.queue_scancodes(b"\x1e\x1f")
    b.command(0xAA)
    assert b.inb(0x60) == 0x1E               # already in the output buffer
    assert b.inb(0x60) == 0x55
    assert b.inb(0x60) == 0x1F


def test_keyboard_commands_reply(b):
    b.outb(0x60, 0xFF)
    assert [b.inb(0x60), b.inb(0x60)] == [0xFA, 0xAA]
    b.outb(0x60, 0xF2)
    assert [b.inb(0x60), b.inb(0x60), b.inb(0x60)] == [0xFA, 0xAB, 0x83]
    b.outb(0x60, 0xED)
    b.outb(0x60, 0x07)                       # LEDs: two ACKs
    assert [b.inb(0x60), b.inb(0x60)] == [0xFA, 0xFA]
    b.outb(0x60, 0xF5)
    assert b.inb(0x60) == 0xFA
    b.kbc.queue_scancodes(b"\x1e")           # scanning disabled: the key is not sent
    assert b.inb(0x64) & OBF == 0


def test_aux_loopback_sets_auxb_and_irq12(b):
    b.command(0x60, 0x47)                    # INT, INT2, SYS, XLAT
    b.command(0xD3, 0x5A)
    assert b.inb(0x64) & (OBF | AUXB) == OBF | AUXB
    assert (12, True) in b.irq
    assert b.inb(0x60) == 0x5A


def test_port92_fast_a20_and_reset(b):
    b.command(0xD1, 0xDD)                    # keyboard controller gate off
    b.outb(0x92, 0x02)
    assert b.kbc.a20.enabled and b.inb(0x92) == 0x02
    assert b.a20 == [False, True]
    b.outb(0x92, 0x03)
    assert b.resets == 1
    b.outb(0x92, 0x03)                       # no 0 -> 1 transition: no second reset
    assert b.resets == 1
