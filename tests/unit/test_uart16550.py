"""16550A UART as COM1 (0x3F8, IRQ 4) driven through its port window like a guest driver."""
import pytest

from vmm.bus import Bus, IrqLine
from vmm.devices.uart16550 import Uart16550

COM1 = 0x3F8
RBR = THR = DLL = COM1 + 0
IER = DLM = COM1 + 1
IIR = FCR = COM1 + 2
LCR, MCR, LSR, MSR, SCR = COM1 + 3, COM1 + 4, COM1 + 5, COM1 + 6, COM1 + 7


class Com1:
    def __init__(self):
        self.sent = bytearray()
        self.irq_events = []
        self.uart = Uart16550(IrqLine(lambda n, level: self.irq_events.append((n, level)), 4),
                              self.sent.extend)
        self.bus = Bus("pio")
        self.bus.insert(self.uart, COM1, 8)

    def outb(self, port, value):
        self.bus.write(port, 1, value)

    def inb(self, port):
        return self.bus.read(port, 1)

    @property
    def irq_high(self):
        levels = [level for _, level in self.irq_events]
        return bool(levels) and levels[-1]

    def osdev_init(self):
        """The OSDev wiki serial init: 38400 8N1, FIFO 14-byte trigger, loopback self-test."""
        for port, value in [(IER, 0x00), (LCR, 0x80), (DLL, 0x03), (DLM, 0x00), (LCR, 0x03),
                            (FCR, 0xC7), (MCR, 0x0B), (MCR, 0x1E), (THR, 0xAE)]:
            self.outb(port, value)
        echoed = self.inb(RBR)
        self.outb(MCR, 0x0F)
        return echoed


@pytest.fixture
def c():
    return Com1()


def test_power_on_register_values(c):
    assert c.inb(IER) == 0x00
    assert c.inb(IIR) == 0x01
    assert c.inb(LCR) == 0x00
    assert c.inb(MCR) == 0x00
    assert c.inb(LSR) == 0x60
    assert c.inb(MSR) == 0xB0            # CTS, DSR, DCD asserted by the host side, no deltas
    assert c.irq_events == []


def test_osdev_init_sequence(c):
    assert c.osdev_init() == 0xAE
    assert c.uart.divisor == 3 and c.uart.baud == 38400
    assert c.inb(IIR) == 0xC1            # FIFOs enabled, no interrupt
    assert c.inb(LCR) == 0x03
    assert bytes(c.sent) == b""          # the loopback byte never left the chip


def test_dlab_switches_offsets_0_and_1_to_the_divisor_latch(c):
    c.outb(LCR, 0x83)
    c.outb(DLL, 0x01)
    c.outb(DLM, 0x00)
    assert c.inb(DLL) == 0x01 and c.inb(DLM) == 0x00
    c.outb(LCR, 0x03)
    assert c.uart.baud == 115200
    assert c.inb(IER) == 0x00
    assert bytes(c.sent) == b""


def test_polled_transmit(c):
    for byte in b"hi\n":
        assert c.inb(LSR) & 0x20         # THRE: the driver may write
        c.outb(THR, byte)
    assert bytes(c.sent) == b"hi\n"
    assert c.inb(LSR) == 0x60            # THRE and TEMT stay set


def test_polled_receive(c):
    c.outb(FCR, 0x07)
    assert not c.inb(LSR) & 0x01
    c.uart.receive(b"ok")
    assert c.inb(LSR) == 0x61            # DR, THRE, TEMT
    assert c.inb(RBR) == ord("o")
    assert c.inb(LSR) == 0x61
    assert c.inb(RBR) == ord("k")
    assert c.inb(LSR) == 0x60


def test_holding_register_overrun_keeps_the_newest_byte(c):
    c.uart.receive(b"ab")
    assert c.inb(LSR) == 0x63            # DR, OE, THRE, TEMT
    assert c.inb(LSR) == 0x61            # reading LSR cleared OE
    assert c.inb(RBR) == ord("b")


def test_fifo_holds_16_and_drops_the_17th(c):
    c.outb(FCR, 0x07)
    c.outb(IER, 0x04)                    # ELSI
    data = bytes(range(0x41, 0x41 + 17))
    c.uart.receive(data)
    assert c.inb(IIR) == 0xC6            # receiver line status: overrun
    assert c.inb(LSR) == 0x63
    assert c.inb(IIR) == 0xC1
    received = bytes(c.inb(RBR) for _ in range(16))
    assert received == data[:16]
    assert c.inb(LSR) == 0x60
    assert c.uart.can_receive() == 16


def test_fcr_rx_reset_empties_the_fifo(c):
    c.outb(FCR, 0x01)
    c.uart.receive(b"xyz")
    c.outb(FCR, 0x03)
    assert not c.inb(LSR) & 0x01


def test_rx_interrupt_needs_out2(c):
    c.outb(IER, 0x01)
    c.uart.receive(b"k")
    assert c.inb(IIR) == 0x04
    assert c.irq_events == []            # OUT2 low: IRQ pin gated off
    c.outb(MCR, 0x0B)
    assert c.irq_events == [(4, True)]
    assert c.inb(RBR) == ord("k")
    assert c.irq_events == [(4, True), (4, False)]
    assert c.inb(IIR) == 0x01


def test_fifo_trigger_level_and_character_timeout(c):
    c.outb(FCR, 0xC7)                    # 14-byte trigger
    c.outb(MCR, 0x08)
    c.outb(IER, 0x01)
    c.uart.receive(b"abc")
    assert c.inb(IIR) == 0xCC            # below trigger: character timeout
    c.uart.receive(bytes(11))
    assert c.inb(IIR) == 0xC4            # 14 bytes: received data available
    c.inb(RBR)
    assert c.inb(IIR) == 0xCC


def test_thre_interrupt_semantics(c):
    c.outb(MCR, 0x08)
    c.outb(IER, 0x02)                    # enabling ETBEI with THR empty raises it
    assert c.irq_high
    assert c.inb(IIR) == 0x02
    assert not c.irq_high                # reading IIR cleared it
    assert c.inb(IIR) == 0x01
    c.outb(THR, ord("x"))                # THR empties at once: THRE interrupt again
    assert c.irq_events == [(4, True), (4, False), (4, True)]
    assert c.inb(IIR) == 0x02
    c.outb(IER, 0x00)
    assert not c.irq_high


def test_thr_write_while_thre_pending_makes_a_new_edge(c):
    c.outb(MCR, 0x08)
    c.outb(IER, 0x02)
    c.outb(THR, ord("x"))
    assert c.irq_events == [(4, True), (4, False), (4, True)]


def test_iir_priority_order(c):
    c.outb(MCR, 0x08)
    c.uart.receive(b"ab")                # overrun in the holding register
    c.outb(MCR, 0x18)                    # loopback: DCD now follows OUT2, DSR/CTS drop: deltas
    c.outb(IER, 0x0F)
    assert c.inb(IIR) == 0x06            # receiver line status
    c.inb(LSR)
    assert c.inb(IIR) == 0x04            # received data available
    c.inb(RBR)
    assert c.inb(IIR) == 0x02            # THR empty (cleared by this read)
    assert c.inb(IIR) == 0x00            # modem status
    assert c.inb(MSR) == 0x80 | 0x03     # DCD, with DCTS and DDSR
    assert c.inb(IIR) == 0x01


def test_loopback_modem_lines_as_linux_autoconfig_checks(c):
    c.outb(MCR, 0x1A)                    # LOOP | OUT2 | RTS
    assert c.inb(MSR) & 0xF0 == 0x90     # DCD | CTS
    c.outb(MCR, 0x1F)
    assert c.inb(MSR) & 0xF0 == 0xF0


def test_loopback_ri_trailing_edge_sets_teri(c):
    c.outb(MCR, 0x14)                    # LOOP | OUT1 -> RI
    c.inb(MSR)
    c.outb(MCR, 0x10)
    assert c.inb(MSR) == 0x04            # TERI only
    assert c.inb(MSR) == 0x00            # deltas clear on read


def test_loopback_echoes_and_drops_host_input(c):
    c.outb(MCR, 0x10)
    assert c.uart.can_receive() == 0
    c.uart.receive(b"Z")
    assert not c.inb(LSR) & 0x01
    c.outb(THR, 0x55)
    assert c.inb(RBR) == 0x55
    assert bytes(c.sent) == b""


def test_scratch_register(c):
    c.outb(SCR, 0xA5)
    assert c.inb(SCR) == 0xA5
    c.outb(SCR, 0x5A)
    assert c.inb(SCR) == 0x5A


def test_ier_upper_bits_and_mcr_upper_bits_read_as_zero(c):
    c.outb(IER, 0xFF)
    assert c.inb(IER) == 0x0F
    c.outb(MCR, 0xFF)
    assert c.inb(MCR) == 0x1F
