"""The National Semiconductor NS16550A UART (datasheet register names), as COM1 at 0x3F8 / IRQ 4.

Transmission is instantaneous: a THR write reaches the output sink at once and THRE/TEMT never
drop. Reception goes through a 16-byte FIFO (one holding register with FIFOs off) with overrun.
Interrupts follow the IIR priority order; the IRQ pin is gated by MCR.OUT2 as on a PC, unless the
board wires it as QEMU does (``out2_gates_irq=False``: QEMU's serial.c raises the IRQ whenever an
enabled interrupt is pending, and xv6, which writes MCR = 0, relies on it).
"""
from __future__ import annotations

from typing import Callable

from vmm.bus import IrqLine
from vmm.snapshot.state import PlainState

RBR = THR = DLL = 0
IER = DLM = 1
IIR = FCR = 2
LCR = 3
MCR = 4
LSR = 5
MSR = 6
SCR = 7

IER_ERBFI, IER_ETBEI, IER_ELSI, IER_EDSSI = 0x01, 0x02, 0x04, 0x08
IIR_NO_INT, IIR_RLS, IIR_RDA, IIR_CTI, IIR_THRE, IIR_MS = 0x01, 0x06, 0x04, 0x0C, 0x02, 0x00
IIR_FIFOS_ENABLED = 0xC0
FCR_FIFO_ENABLE, FCR_RX_RESET, FCR_WRITABLE = 0x01, 0x02, 0xC9
LCR_DLAB = 0x80
MCR_DTR, MCR_RTS, MCR_OUT1, MCR_OUT2, MCR_LOOP = 0x01, 0x02, 0x04, 0x08, 0x10
LSR_DR, LSR_OE, LSR_THRE, LSR_TEMT = 0x01, 0x02, 0x20, 0x40
MSR_DCTS, MSR_DDSR, MSR_TERI, MSR_DDCD = 0x01, 0x02, 0x04, 0x08
MSR_CTS, MSR_DSR, MSR_RI, MSR_DCD = 0x10, 0x20, 0x40, 0x80

FIFO_DEPTH = 16
RX_TRIGGER_LEVELS = (1, 4, 8, 14)
UART_CLOCK_HZ = 1_843_200
# With the loop off, the modem inputs show a connected terminal: CTS, DSR and DCD asserted.
HOST_MODEM_INPUTS = MSR_CTS | MSR_DSR | MSR_DCD


def _loopback_inputs(mcr: int) -> int:
    """Loopback wiring: RTS -> CTS, DTR -> DSR, OUT1 -> RI, OUT2 -> DCD."""
    return ((MSR_CTS if mcr & MCR_RTS else 0) | (MSR_DSR if mcr & MCR_DTR else 0)
            | (MSR_RI if mcr & MCR_OUT1 else 0) | (MSR_DCD if mcr & MCR_OUT2 else 0))


class Uart16550(PlainState):
    """One 16550A behind an 8-port window.

    Power-on (master reset) state per the datasheet: IER 0, IIR 0x01, FCR 0, LCR 0, MCR 0,
    LSR 0x60, MSR deltas 0; the divisor latch and SCR, left undefined there, start at 0.
    With FIFOs on, data below the trigger level reports a character timeout (IIR 0x0C) at once:
    the line is idle the moment ``receive`` returns. Host input is dropped in loopback mode (the
    SIN pin is disconnected) and RBR reads 0 when empty. Only the low byte of a wider access is
    used; LSR writes (factory test) are ignored.
    """
    STATE = ("ier", "lcr", "mcr", "scr", "fcr", "divisor", "_rx", "_overrun", "_thr_interrupt",
             "_modem_inputs", "_modem_deltas", "_irq_level")

    def __init__(self, irq: IrqLine, sink: Callable[[bytes], None],
                 name: str = "uart16550", out2_gates_irq: bool = True) -> None:
        self.name = name
        self._irq = irq
        self._out2_gates_irq = out2_gates_irq
        self._sink = sink
        self.ier = self.lcr = self.mcr = self.scr = self.fcr = 0
        self.divisor = 0
        self._rx: list[int] = []
        self._overrun = False
        self._thr_interrupt = False
        self._modem_inputs = HOST_MODEM_INPUTS
        self._modem_deltas = 0
        self._irq_level = False
        self.before_read: Callable[[], None] | None = None  # the host line: feeds input on reads

    @property
    def fifo_enabled(self) -> bool:
        return bool(self.fcr & FCR_FIFO_ENABLE)

    @property
    def baud(self) -> int | None:
        """Bit rate from the divisor latch and the PC's 1.8432 MHz clock: clock / 16 / divisor."""
        return UART_CLOCK_HZ // 16 // self.divisor if self.divisor else None

    def receive(self, data: bytes) -> None:
        """Bytes arriving on SIN from the host, each as if it had just been shifted in."""
        if self.mcr & MCR_LOOP:
            return
        for byte in data:
            self._push_rx(byte)
        self._update_irq()

    def receiver_empty(self) -> bool:
        """No received byte waits to be read (LSR.DR clear)."""
        return not self._rx

    def can_receive(self) -> int:
        """Free receive slots, for a host that paces its input instead of overrunning; 0 in
        loopback, where host input would be dropped."""
        if self.mcr & MCR_LOOP:
            return 0
        return (FIFO_DEPTH if self.fifo_enabled else 1) - len(self._rx)

    def read(self, offset: int, size: int) -> int:
        if self.before_read is not None:
            self.before_read()
        dlab = self.lcr & LCR_DLAB
        if offset == RBR:
            return self.divisor & 0xFF if dlab else self._read_rbr()
        if offset == IER:
            return self.divisor >> 8 if dlab else self.ier
        return self._READERS[offset](self)

    def write(self, offset: int, size: int, value: int) -> None:
        value &= 0xFF
        dlab = self.lcr & LCR_DLAB
        if offset == THR and dlab:
            self.divisor = self.divisor & 0xFF00 | value
        elif offset == DLM and dlab:
            self.divisor = self.divisor & 0x00FF | value << 8
        else:
            self._WRITERS[offset](self, value)
        self._update_irq()

    def interrupt_id(self) -> int:
        """IIR bits 3:0 for the highest-priority enabled pending interrupt (0x01: none)."""
        ier = self.ier
        if ier & IER_ELSI and self._overrun:
            return IIR_RLS
        if ier & IER_ERBFI and self._rx:
            return IIR_RDA if len(self._rx) >= self._rx_trigger() else IIR_CTI
        if ier & IER_ETBEI and self._thr_interrupt:
            return IIR_THRE
        if ier & IER_EDSSI and self._modem_deltas:
            return IIR_MS
        return IIR_NO_INT

    def _rx_trigger(self) -> int:
        return RX_TRIGGER_LEVELS[self.fcr >> 6] if self.fifo_enabled else 1

    def _push_rx(self, byte: int) -> None:
        """Overrun: a full FIFO drops the new byte; the 16450-mode RBR is overwritten by it."""
        if len(self._rx) < (FIFO_DEPTH if self.fifo_enabled else 1):
            self._rx.append(byte)
            return
        self._overrun = True
        if not self.fifo_enabled:
            self._rx[0] = byte

    def _read_rbr(self) -> int:
        if not self._rx:
            return 0
        byte = self._rx.pop(0)
        self._update_irq()
        return byte

    def _read_iir(self) -> int:
        """Reading IIR while it reports THRE clears that interrupt."""
        iid = self.interrupt_id()
        if iid == IIR_THRE:
            self._thr_interrupt = False
            self._update_irq()
        return iid | (IIR_FIFOS_ENABLED if self.fifo_enabled else 0)

    def _read_lsr(self) -> int:
        """LSR; the read clears OE (and with it the receiver line status interrupt)."""
        lsr = LSR_THRE | LSR_TEMT | (LSR_DR if self._rx else 0) | (LSR_OE if self._overrun else 0)
        self._overrun = False
        self._update_irq()
        return lsr

    def _read_msr(self) -> int:
        """MSR; the read clears the delta bits 3:0 (and the modem status interrupt)."""
        msr = self._modem_inputs | self._modem_deltas
        self._modem_deltas = 0
        self._update_irq()
        return msr

    def _write_thr(self, value: int) -> None:
        """The byte leaves at once, so THR is empty again: the THRE interrupt drops and re-arms."""
        self._thr_interrupt = False
        self._update_irq()
        if self.mcr & MCR_LOOP:
            self._push_rx(value)
        else:
            self._sink(bytes((value,)))
        self._thr_interrupt = True

    def _write_ier(self, value: int) -> None:
        """Enabling ETBEI while THR is empty (always, here) raises the THRE interrupt."""
        if value & IER_ETBEI and not self.ier & IER_ETBEI:
            self._thr_interrupt = True
        self.ier = value & 0x0F

    def _write_fcr(self, value: int) -> None:
        """FCR0 must be set for the other bits to count; toggling it empties the FIFOs. TX reset
        has nothing to do: the transmitter is always empty."""
        if (value ^ self.fcr) & FCR_FIFO_ENABLE or value & FCR_FIFO_ENABLE and value & FCR_RX_RESET:
            self._rx.clear()
        self.fcr = value & FCR_WRITABLE if value & FCR_FIFO_ENABLE else 0

    def _write_lcr(self, value: int) -> None:
        self.lcr = value

    def _write_mcr(self, value: int) -> None:
        self.mcr = value & 0x1F
        inputs = _loopback_inputs(self.mcr) if self.mcr & MCR_LOOP else HOST_MODEM_INPUTS
        self._set_modem_inputs(inputs)

    def _set_modem_inputs(self, inputs: int) -> None:
        """Latch the MSR deltas: DCTS/DDSR/DDCD on any change, TERI on RI's trailing edge."""
        changed = (inputs ^ self._modem_inputs) >> 4
        trailing_ri = self._modem_inputs & ~inputs & MSR_RI
        self._modem_deltas |= changed & (MSR_DCTS | MSR_DDSR | MSR_DDCD)
        self._modem_deltas |= MSR_TERI if trailing_ri else 0
        self._modem_inputs = inputs

    def _write_scr(self, value: int) -> None:
        self.scr = value

    def _ignore(self, value: int) -> None:
        """LSR and MSR writes: factory test only, no effect here."""

    def _update_irq(self) -> None:
        """IRQ level = an enabled interrupt pending (and MCR.OUT2, where it gates the pin); the
        line moves only on change."""
        gate = self.mcr & MCR_OUT2 or not self._out2_gates_irq
        level = bool(gate) and self.interrupt_id() != IIR_NO_INT
        if level != self._irq_level:
            self._irq_level = level
            if level:
                self._irq.raise_()
            else:
                self._irq.lower()

    _READERS = {IIR: _read_iir, LCR: lambda self: self.lcr, MCR: lambda self: self.mcr,
                LSR: _read_lsr, MSR: _read_msr, SCR: lambda self: self.scr}
    _WRITERS = {THR: _write_thr, IER: _write_ier, FCR: _write_fcr, LCR: _write_lcr,
                MCR: _write_mcr, LSR: _ignore, MSR: _ignore, SCR: _write_scr}
