"""Every device's save_state()/load_state(), without a CPU: a device driven into a busy state is
saved, passed through the snapshot file's MessagePack encoding, loaded into a fresh one, and
then both are driven on the same way: they must answer the same, with the same IRQ activity, and
end in the same state (restore-then-continue equals uninterrupted)."""
from __future__ import annotations

import pytest

from vmm.bus import IrqLine
from vmm.clock import VirtualClock
from vmm.devices.crtc import Crtc
from vmm.devices.debug import DebugConsole, DebugExit, NullDevice
from vmm.devices.i8042 import I8042, A20Gate, SystemControlPortA
from vmm.devices.ide import DiskImage, IdeChannel
from vmm.devices.ioapic import IoApic
from vmm.devices.lapic import LocalApic
from vmm.devices.mc146818 import Mc146818
from vmm.devices.pc_testdev import TestdevFlush, TestdevIomem, TestdevIoport, TestdevIrq
from vmm.devices.pci_host import PciHostNoDevices
from vmm.devices.pic8259 import Pic8259Pair
from vmm.devices.pit8254 import Pit8254
from vmm.devices.uart16550 import Uart16550
from vmm.snapshot.format import Snapshot
from vmm.snapshot.state import StateError


class Rig:
    """A device with its clock and a log of everything it signals (IRQ levels, output)."""

    def __init__(self, make):
        self.clock = VirtualClock()
        self.log: list = []
        self.device = make(self)

    def line(self, number: int) -> IrqLine:
        return IrqLine(lambda n, level: self.log.append(("irq", n, level)), number)

    def out(self, offset: int, value: int, size: int = 1) -> None:
        self.device.write(offset, size, value)

    def inp(self, offset: int, size: int = 1) -> int:
        value = self.device.read(offset, size)
        self.log.append(("in", offset, value))
        return value


def uart_busy(r):
    for offset, value in ((3, 0x80), (0, 12), (1, 0), (3, 0x03), (2, 0xC7), (1, 0x05), (4, 0x0B)):
        r.out(offset, value)
    r.device.receive(b"snapshot")
    r.inp(0), r.inp(2), r.out(0, ord("x"))


def uart_more(r):
    for _ in range(9):
        r.inp(5), r.inp(0), r.inp(2)
    r.device.receive(b"more"), r.inp(0)


def pit_busy(r):
    r.out(3, 0x34), r.out(0, 0xE8), r.out(0, 0x03)         # counter 0: mode 2, 1000
    r.out(3, 0xB6), r.out(2, 0x34)                         # counter 2: low byte written only
    r.out(3, 0x70), r.out(1, 0x10), r.out(1, 0x27)         # counter 1: mode 0, 10000
    r.clock.advance(123_456)
    r.device.update()
    r.out(3, 0x70)                                         # reprogrammed: its count is held
    r.out(3, 0x00), r.inp(0)                               # latched, low byte read


def pit_more(r):
    r.inp(0), r.out(2, 0x12), r.out(3, 0x40), r.inp(1), r.inp(1)
    for step in (400_000, 1_000_000, 7):
        r.clock.advance(step)
        r.device.update()
        r.out(3, 0xC2), r.inp(0), r.inp(0), r.inp(0)       # read-back: status, then count
    r.log.append(("deadline", r.device.next_deadline_ns()))


def pic_busy(r):
    for port, value in ((0x00, 0x11), (0x01, 0x20), (0x01, 0x04), (0x01, 0x01), (0x01, 0xF8)):
        r.device.master.write(port, 1, value)
    for port, value in ((0x00, 0x11), (0x01, 0x28), (0x01, 0x02), (0x01, 0x01), (0x01, 0xFE)):
        r.device.slave.write(port, 1, value)
    r.device.set_irq(1, True), r.device.set_irq(0, True), r.device.set_irq(0, False)
    r.device.master.write(0, 1, 0x0B)                      # OCW3: read ISR next


def pic_more(r):
    for _ in range(3):
        r.log.append(("int", r.device.has_interrupt()))
        if r.device.has_interrupt():
            r.log.append(("vector", r.device.acknowledge()))
        r.log.append(("isr", r.device.master.read(0, 1), r.device.master.read(1, 1)))
        r.device.master.write(0, 1, 0x20)


def kbc_busy(r):
    r.out(4, 0x20), r.inp(0), r.out(4, 0x60), r.out(0, 0x47), r.out(4, 0xD3), r.out(0, 0x5A)
    r.out(0, 0xF5), r.out(4, 0xD1)


def kbc_more(r):
    r.out(0, 0xDF)
    for _ in range(4):
        r.inp(4), r.inp(0)
    r.log.append(("a20", r.device.a20.enabled))


def rtc_busy(r):
    r.out(0, 0x0B), r.out(1, 0x86), r.out(0, 0x00), r.out(1, 0x30), r.out(0, 0x0B)
    r.out(1, 0x06), r.out(0, 0x40), r.out(1, 0x77), r.out(0, 0x8E)


def rtc_more(r):
    for index in (0x00, 0x02, 0x04, 0x0B, 0x0E, 0x40):
        r.out(0, index), r.inp(1)


def lapic_busy(r):
    r.out(0xF0, 0x1FF, 4), r.out(0x3E0, 0x3, 4), r.out(0x320, 0x20030, 4)
    r.out(0x380, 50_000, 4), r.out(0x80, 0x10, 4)
    r.clock.advance(777_777)
    r.device.update()


def lapic_more(r):
    for _ in range(3):
        r.clock.advance(1_000_000)
        r.device.update()
        r.inp(0x390, 4), r.inp(0x200 + 0x10 * 1, 4)
        if r.device.has_interrupt():
            r.log.append(("vector", r.device.acknowledge()))
            r.out(0xB0, 0, 4)


def ioapic_busy(r):
    r.out(0, 0x10, 4), r.out(0x10, 0x8031, 4), r.out(0, 0x14, 4), r.out(0x10, 0x32, 4)
    r.device.set_irq(0, True), r.device.set_irq(2, True)


def ioapic_more(r):
    r.device.eoi(0x31)
    r.device.set_irq(2, False), r.device.set_irq(2, True)
    for index in (0x10, 0x11, 0x14, 0x01):
        r.out(0, index, 4), r.inp(0x10, 4)


def ide_busy(r):
    r.out(6, 0xE0), r.out(2, 2), r.out(3, 1), r.out(7, 0x20)   # READ SECTORS: 2 from LBA 1
    for _ in range(100):
        r.inp(0, 2)


def ide_more(r):
    for _ in range(420):
        r.inp(0, 2)
    r.inp(7), r.out(6, 0xA0), r.out(7, 0xEC), r.inp(0, 4)


def indexed(r):
    r.out(0, 0x0E), r.out(1, 0x12), r.out(0, 0x0F)


def indexed_more(r):
    r.out(1, 0x34), r.out(0, 0x0E), r.inp(1), r.inp(0)


def dword(r):
    r.out(0, 0x80001234, 4)


def dword_more(r):
    r.out(0, 0x8000_0800, 4), r.inp(0, 4), r.inp(4, 4)


def disk(tmp_path):
    path = tmp_path / "disk.img"
    path.write_bytes(bytes(range(256)) * 2 * 64)
    return path


CASES = {
    "uart16550": (lambda r: Uart16550(r.line(4), lambda data: r.log.append(("tx", data))),
                  uart_busy, uart_more),
    "pit8254": (lambda r: Pit8254(r.clock, r.line(0)), pit_busy, pit_more),
    "pic8259 pair": (lambda r: Pic8259Pair(on_intr=lambda: r.log.append("intr")),
                     pic_busy, pic_more),
    "i8042": (lambda r: I8042(r.line(1), r.line(12), a20=A20Gate()), kbc_busy, kbc_more),
    "mc146818": (lambda r: Mc146818(lambda: 1_700_000_000 + r.clock.now_ns() / 1e9, 32 << 20),
                 rtc_busy, rtc_more),
    "lapic": (lambda r: LocalApic(r.clock, on_intr=lambda: r.log.append("intr")),
              lapic_busy, lapic_more),
    "ioapic": (lambda r: IoApic(lambda message: r.log.append(("msg", tuple(message)))),
               ioapic_busy, ioapic_more),
    "crtc": (lambda r: Crtc(), indexed, indexed_more),
    "pci host": (lambda r: PciHostNoDevices(), dword, dword_more),
    "pc-testdev ioport": (lambda r: TestdevIoport(), dword, dword_more),
    "pc-testdev iomem": (lambda r: TestdevIomem(), dword, dword_more),
    "port 0x92": (lambda r: SystemControlPortA(A20Gate(), lambda: r.log.append("reset")),
                  lambda r: r.out(0, 0x02), lambda r: (r.out(0, 0x03), r.inp(0))),
    "post 0x80": (lambda r: NullDevice("post"), lambda r: r.out(0, 1), lambda r: r.inp(0)),
}
STATELESS = (DebugExit(lambda value: None), DebugConsole(lambda data: None), TestdevFlush(),
             TestdevIrq({}))


def through_file(state: dict) -> dict:
    """The state as a snapshot file gives it back (MessagePack: plain data only)."""
    snapshot = Snapshot()
    snapshot.put("device", state)
    return snapshot.get("device")


def check(make, busy, more):
    original = Rig(make)
    busy(original)
    saved = original.device.save_state()
    copy = Rig(make)
    copy.clock.set(original.clock.now_ns())
    copy.device.load_state(through_file(saved))
    assert copy.device.save_state() == saved
    original.log.clear()
    more(original)
    more(copy)
    assert copy.log == original.log
    assert copy.device.save_state() == original.device.save_state()


@pytest.mark.parametrize("name", CASES)
def test_saved_device_continues_as_the_original(name):
    check(*CASES[name])


def test_saved_ide_channel_continues_mid_transfer(tmp_path):
    image = DiskImage(disk(tmp_path))
    try:
        check(lambda r: IdeChannel(r.line(14), image), ide_busy, ide_more)
    finally:
        image.close()


def test_stateless_devices_save_nothing():
    for device in STATELESS:
        assert device.save_state() == {}
        device.load_state({})


def test_state_with_a_field_missing_is_refused():
    uart = Uart16550(IrqLine(lambda n, level: None, 4), lambda data: None)
    state = uart.save_state()
    del state["lcr"]
    with pytest.raises(StateError, match="Uart16550 state lacks lcr"):
        uart.load_state(state)
