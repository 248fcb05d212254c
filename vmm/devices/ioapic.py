"""The Intel 82093AA I/O APIC (82093AA datasheet, as extended by the ICH's I/O APIC): an indirect
register window (IOREGSEL at 0x00, IOWIN at 0x10) at 0xFEC00000 with 24 redirection entries that
turn input pin levels into APIC messages for the local APICs.
"""
from __future__ import annotations

from typing import Callable

from vmm.bus import IrqLine
from vmm.devices.lapic import ApicMessage
from vmm.snapshot.state import PlainState

IOAPIC_DEFAULT_BASE = 0xFEC00000
IOAPIC_WINDOW = 0x20
IOREGSEL, IOWIN = 0x00, 0x10
IOAPICID, IOAPICVER, IOAPICARB = 0x00, 0x01, 0x02
IOREDTBL = 0x10                        # entry n: low dword at 0x10 + 2n, high at 0x11 + 2n
IOAPIC_VERSION = 0x11
PINS = 24

RTE_DELIVERY_STATUS = 1 << 12
RTE_POLARITY_LOW = 1 << 13
RTE_REMOTE_IRR = 1 << 14
RTE_LEVEL_TRIGGER = 1 << 15
RTE_MASKED = 1 << 16
RTE_LOW_WRITABLE = 0x1AFFF             # all but delivery status (12) and remote IRR (14)
RTE_HIGH_WRITABLE = 0xFF000000         # destination field, bits 63:56


class IoApic(PlainState):
    """One I/O APIC with 24 pins. ``deliver(message)`` is the APIC bus: it receives an
    ``ApicMessage`` (vector, delivery mode, trigger, destination, logical) for each interrupt.

    Power-on state (datasheet): every redirection entry masked, the rest of it 0; ID 0 unless
    given. Pin levels are logical (asserted = True): the polarity bit is stored and read back but
    does not invert the input, as in QEMU (the board wires each pin with the sense it expects).
    An edge on a masked pin is lost; a level held on a masked pin is delivered when unmasked.
    Delivery is instantaneous, so delivery status always reads idle. IOWIN accepts 32-bit
    accesses; IOREGSEL keeps the low byte of any write.
    """
    STATE = ("id", "arbitration_id", "select", "redirection", "levels")

    name = "ioapic"

    def __init__(self, deliver: Callable[[ApicMessage], None], apic_id: int = 0) -> None:
        self._deliver = deliver
        self.id = apic_id & 0xF
        self.arbitration_id = self.id
        self.select = 0
        self.redirection = [RTE_MASKED] * PINS
        self.levels = [False] * PINS
        self.on_reconfigure: Callable[[], None] | None = None

    # ----- input pins ------------------------------------------------------------------------
    def irq_line(self, pin: int) -> IrqLine:
        self._check_pin(pin)
        return IrqLine(self.set_irq, pin)

    def set_irq(self, pin: int, level: bool) -> None:
        """Drive an input pin: edge entries fire on a rising level, level entries while held."""
        self._check_pin(pin)
        rising = level and not self.levels[pin]
        self.levels[pin] = level
        entry = self.redirection[pin]
        if entry & RTE_LEVEL_TRIGGER:
            self._service_level(pin)
        elif rising and not entry & RTE_MASKED:
            self._send(pin)

    def eoi(self, vector: int) -> None:
        """A local APIC's EOI broadcast: clear remote IRR of level entries with that vector, and
        deliver again any whose input is still asserted."""
        for pin, entry in enumerate(self.redirection):
            if entry & RTE_LEVEL_TRIGGER and entry & 0xFF == vector and entry & RTE_REMOTE_IRR:
                self.redirection[pin] = entry & ~RTE_REMOTE_IRR
                self._service_level(pin)

    def all_masked(self) -> bool:
        return all(entry & RTE_MASKED for entry in self.redirection)

    def _service_level(self, pin: int) -> None:
        entry = self.redirection[pin]
        if self.levels[pin] and not entry & (RTE_MASKED | RTE_REMOTE_IRR):
            self.redirection[pin] = entry | RTE_REMOTE_IRR
            self._send(pin)

    def _send(self, pin: int) -> None:
        low = self.redirection[pin] & 0xFFFFFFFF
        high = self.redirection[pin] >> 32
        self._deliver(ApicMessage(vector=low & 0xFF, delivery_mode=low >> 8 & 7,
                                  level_triggered=bool(low & RTE_LEVEL_TRIGGER),
                                  destination=high >> 24, logical=bool(low & 1 << 11)))

    # ----- the register window ---------------------------------------------------------------
    def read(self, offset: int, size: int) -> int:
        if offset == IOREGSEL:
            return self.select
        if offset == IOWIN:
            return self._read_register(self.select) & ((1 << 8 * size) - 1)
        return 0

    def write(self, offset: int, size: int, value: int) -> None:
        if offset == IOREGSEL:
            self.select = value & 0xFF
        elif offset == IOWIN:
            self._write_register(self.select, value & 0xFFFFFFFF)
            if self.on_reconfigure is not None:
                self.on_reconfigure()

    def _read_register(self, index: int) -> int:
        if index == IOAPICID:
            return self.id << 24
        if index == IOAPICVER:
            return (PINS - 1) << 16 | IOAPIC_VERSION
        if index == IOAPICARB:
            return self.arbitration_id << 24
        pin, high = self._entry_index(index)
        if pin is None:
            return 0
        return self.redirection[pin] >> 32 if high else self.redirection[pin] & 0xFFFFFFFF

    def _write_register(self, index: int, value: int) -> None:
        """IOAPICID bits 27:24 are writable and also load the arbitration ID; VER and ARB are
        read-only. Writing a level entry's low dword may unmask it onto an asserted pin."""
        if index == IOAPICID:
            self.id = self.arbitration_id = value >> 24 & 0xF
            return
        pin, high = self._entry_index(index)
        if pin is None:
            return
        entry = self.redirection[pin]
        if high:
            self.redirection[pin] = (value & RTE_HIGH_WRITABLE) << 32 | entry & 0xFFFFFFFF
            return
        kept = entry & ~RTE_LOW_WRITABLE
        if not value & RTE_LEVEL_TRIGGER:
            kept &= ~RTE_REMOTE_IRR            # remote IRR is undefined for edge entries
        self.redirection[pin] = kept | value & RTE_LOW_WRITABLE
        if value & RTE_LEVEL_TRIGGER:
            self._service_level(pin)

    @staticmethod
    def _entry_index(index: int) -> tuple[int | None, bool]:
        if IOREDTBL <= index < IOREDTBL + 2 * PINS:
            return (index - IOREDTBL) >> 1, bool(index & 1)
        return None, False

    @staticmethod
    def _check_pin(pin: int) -> None:
        if not 0 <= pin < PINS:
            raise ValueError(f"I/O APIC pin {pin} out of range 0-{PINS - 1}")
