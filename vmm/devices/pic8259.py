"""The PC/AT pair of Intel 8259A programmable interrupt controllers (8259A datasheet).

The master answers ports 0x20-0x21 and the slave 0xA0-0xA1; the slave's INT output is wired to
master IR2. Modelled: ICW1-ICW4, OCW1-OCW3, IRR/ISR/IMR, fixed priority, edge- and level-triggered
inputs, AEOI, poll mode, special mask mode, cascade acknowledge and spurious IRQ 7/15.
"""
from __future__ import annotations

from typing import Callable

from vmm.bus import IrqLine
from vmm.snapshot.state import PlainState

CASCADE_IR = 2
SPURIOUS_IR = 7

ICW1_IC4 = 0x01
ICW1_SNGL = 0x02
ICW1_LTIM = 0x08
ICW1_INIT = 0x10
ICW4_AEOI = 0x02
OCW3_RIS = 0x01
OCW3_RR = 0x02
OCW3_POLL = 0x04
OCW3_SELECT = 0x08
OCW3_SMM = 0x20
OCW3_ESMM = 0x40

# OCW2 bits 7:5 (R, SL, EOI). Rotating EOIs are accepted as the plain EOIs: priority stays fixed.
OCW2_NONSPECIFIC_EOI = (0b001, 0b101)
OCW2_SPECIFIC_EOI = (0b011, 0b111)

# Initialization steps: which ICW the next write to the odd port is.
OPERATIONAL, EXPECT_ICW2, EXPECT_ICW3, EXPECT_ICW4 = 0, 2, 3, 4


def _lowest_bit(mask: int) -> int:
    """Index of the least significant set bit: the highest priority level under fixed priority."""
    return (mask & -mask).bit_length() - 1


class Pic8259(PlainState):
    """One 8259A. Port offset 0 is the even address (ICW1, OCW2, OCW3), offset 1 the odd one.

    Power-on state (undefined in the datasheet, chosen here): IMR = 0xFF (everything masked),
    vector base 0, edge-triggered, not initialized; OCWs are accepted before any ICW1. Only the low
    byte of a wider access is used. ICW3, ICW4 uPM/BUF/SFNM are stored but do not change the
    behaviour: the cascade is hard-wired as on the PC/AT and vectors are always 8086 style.
    """
    STATE = ("irr", "isr", "imr", "lines", "vector_base", "icw3", "icw4", "level_triggered",
             "auto_eoi", "special_mask", "initialized", "_init_step", "_icw1", "_read_isr",
             "_poll")

    def __init__(self, name: str, on_change: Callable[[], None]) -> None:
        self.name = name
        self._on_change = on_change
        self.irr = 0
        self.isr = 0
        self.imr = 0xFF
        self.lines = 0
        self.vector_base = 0
        self.icw3 = 0
        self.icw4 = 0
        self.level_triggered = False
        self.auto_eoi = False
        self.special_mask = False
        self.initialized = False
        self._init_step = OPERATIONAL
        self._icw1 = 0
        self._read_isr = False
        self._poll = False

    def set_line(self, ir: int, level: bool) -> None:
        """Drive input IRn. Edge mode latches IRR on a rising edge and keeps it until INTA."""
        bit = 1 << ir
        if level:
            if self.level_triggered or not self.lines & bit:
                self.irr |= bit
            self.lines |= bit
        else:
            self.lines &= ~bit
            if self.level_triggered:
                self.irr &= ~bit

    def pending_ir(self) -> int | None:
        """The level an INTA would service now, or None (masked, or blocked by a higher ISR bit)."""
        requests = self.irr & ~self.imr
        if not requests:
            return None
        ir = _lowest_bit(requests)
        blocking = self.isr & ~self.imr if self.special_mask else self.isr
        if blocking and _lowest_bit(blocking) <= ir:
            return None
        return ir

    def int_output(self) -> bool:
        """The INT pin; held low while an initialization sequence is in progress."""
        return self._init_step == OPERATIONAL and self.pending_ir() is not None

    def intack(self) -> int | None:
        """The INTA cycle on this chip: IRR -> ISR (unless AEOI). None when nothing to service."""
        ir = self.pending_ir()
        if ir is None:
            return None
        bit = 1 << ir
        if not self.level_triggered:
            self.irr &= ~bit
        if not self.auto_eoi:
            self.isr |= bit
        return ir

    def read(self, offset: int, size: int) -> int:
        if offset & 1:
            return self.imr
        if self._poll:
            return self._poll_word()
        return self.isr if self._read_isr else self.irr

    def write(self, offset: int, size: int, value: int) -> None:
        value &= 0xFF
        if offset & 1:
            self._write_odd(value)
        elif value & ICW1_INIT:
            self._icw1_write(value)
        elif value & OCW3_SELECT:
            self._ocw3_write(value)
        else:
            self._ocw2_write(value)
        self._on_change()

    def _poll_word(self) -> int:
        """OCW3 poll: the read acts as INTA and returns 0x80 | level, or 0 with nothing pending."""
        self._poll = False
        ir = self.intack()
        self._on_change()
        return 0 if ir is None else 0x80 | ir

    def _write_odd(self, value: int) -> None:
        if self._init_step == OPERATIONAL:
            self.imr = value
        elif self._init_step == EXPECT_ICW2:
            self.vector_base = value & 0xF8
            self._init_step = self._step_after_icw2()
        elif self._init_step == EXPECT_ICW3:
            self.icw3 = value
            self._init_step = EXPECT_ICW4 if self._icw1 & ICW1_IC4 else OPERATIONAL
        else:
            self.icw4 = value
            self.auto_eoi = bool(value & ICW4_AEOI)
            self._init_step = OPERATIONAL
        self.initialized = self._init_step == OPERATIONAL and self._icw1 != 0

    def _step_after_icw2(self) -> int:
        if not self._icw1 & ICW1_SNGL:
            return EXPECT_ICW3
        return EXPECT_ICW4 if self._icw1 & ICW1_IC4 else OPERATIONAL

    def _icw1_write(self, value: int) -> None:
        """ICW1 resets the edge sense, clears IMR/IRR/ISR, SMM, and selects IRR for reading."""
        self._icw1 = value
        self._init_step = EXPECT_ICW2
        self.initialized = False
        self.level_triggered = bool(value & ICW1_LTIM)
        self.irr = self.lines if self.level_triggered else 0
        self.isr = 0
        self.imr = 0
        self.special_mask = False
        self._read_isr = False
        self._poll = False
        if not value & ICW1_IC4:
            self.icw4 = 0
            self.auto_eoi = False

    def _ocw2_write(self, value: int) -> None:
        """EOI commands; set-priority and rotate-in-AEOI commands are accepted and ignored."""
        command = value >> 5
        if command in OCW2_NONSPECIFIC_EOI and self.isr:
            self.isr &= ~(1 << _lowest_bit(self.isr))
        elif command in OCW2_SPECIFIC_EOI:
            self.isr &= ~(1 << (value & 7))

    def _ocw3_write(self, value: int) -> None:
        if value & OCW3_RR:
            self._read_isr = bool(value & OCW3_RIS)
        self._poll = bool(value & OCW3_POLL)
        if value & OCW3_ESMM:
            self.special_mask = bool(value & OCW3_SMM)


class Pic8259Pair:
    """Master and slave 8259A as on the PC/AT: IRQ 0-7 on the master, 8-15 on the slave.

    ``on_intr`` is called when the master's INT output rises (the vCPU kicks the CPU on it);
    ``acknowledge`` is the CPU's INTA cycle. IRQ 2 is the cascade and cannot be driven.
    """

    def __init__(self, on_intr: Callable[[], None] | None = None) -> None:
        self._on_intr = on_intr
        self.on_reconfigure: Callable[[], None] | None = None  # told after masks may have changed
        self._int_output = False
        self.master = Pic8259("pic-master", self._update)
        self.slave = Pic8259("pic-slave", self._update)

    def save_state(self) -> dict:
        return {"int_output": self._int_output, "master": self.master.save_state(),
                "slave": self.slave.save_state()}

    def load_state(self, state: dict) -> None:
        self._int_output = state["int_output"]
        self.master.load_state(state["master"])
        self.slave.load_state(state["slave"])

    def set_irq(self, irq: int, level: bool) -> None:
        self._check_irq(irq)
        if irq < 8:
            self.master.set_line(irq, level)
        else:
            self.slave.set_line(irq - 8, level)
        self._update()

    def irq_line(self, irq: int) -> IrqLine:
        self._check_irq(irq)
        return IrqLine(self.set_irq, irq)

    def all_masked(self) -> bool:
        """No IRQ line can reach the CPU: every input is masked in the IMRs."""
        return self.master.imr | (1 << CASCADE_IR if self.slave.imr == 0xFF else 0) == 0xFF

    def has_interrupt(self) -> bool:
        """The master's INT output."""
        return self._int_output

    def acknowledge(self) -> int:
        """INTA: the vector of the highest-priority request, or base|7 (IRQ 7/15) if it vanished."""
        ir = self.master.intack()
        if ir is None:
            vector = self.master.vector_base | SPURIOUS_IR
        elif ir == CASCADE_IR:
            vector = self._acknowledge_slave()
        else:
            vector = self.master.vector_base | ir
        self._update()
        return vector

    def _acknowledge_slave(self) -> int:
        """The master put IR2 in service; the slave supplies the vector (spurious: base|7)."""
        ir = self.slave.intack()
        return self.slave.vector_base | (SPURIOUS_IR if ir is None else ir)

    def _update(self) -> None:
        """Propagate slave INT to master IR2, then report a rising master INT to the CPU."""
        if self.on_reconfigure is not None:
            self.on_reconfigure()
        self.master.set_line(CASCADE_IR, self.slave.int_output())
        output = self.master.int_output()
        rising = output and not self._int_output
        self._int_output = output
        if rising and self._on_intr is not None:
            self._on_intr()

    @staticmethod
    def _check_irq(irq: int) -> None:
        if not 0 <= irq < 16 or irq == CASCADE_IR:
            raise ValueError(f"IRQ {irq} cannot be driven (0-15, IRQ 2 is the cascade)")
