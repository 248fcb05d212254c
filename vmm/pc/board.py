"""The PC board both hypervisors build a VM's port-I/O devices from (the one definition of where
each sits and which ISA IRQ it drives), as QEMU's i440FX PC wires them:

    0x20/0xA0 8259A pair   0x40 8254 PIT (IRQ 0)   0x60/0x64 i8042 (IRQ 1, 12)   0x70 MC146818
    0x80 POST (null)       0x92 System Control Port A    0xE0-0xE8, 0x2000+ pc-testdev (0xE9 is
    the console, so the byte-wide read-back register is 0xE8 alone)
    0xE9 debug console     0xF4 isa-debug-exit     0x1F0-0x1F7 + 0x3F6 IDE primary (IRQ 14)
    0x3D4/0x3D5 CGA CRTC   0x3F8 16550 COM1 (IRQ 4, QEMU's OUT2 wiring)   0xCF8 PCI (no device)

The board puts its devices on whatever port bus it is given: the VM's own bus in the monolithic
hypervisor, or the parent partition's bus for one child under micro (crosvm's ProxyDevice
pattern: one set of device classes, two placements). Every ISA IRQ line goes to the 8259 pair
and to each of ``isa_listeners`` (the IOAPIC's pins, wherever the IOAPIC lives).
"""
from __future__ import annotations

import time
from typing import Callable

from vmm.bus import Bus, IrqLine
from vmm.devices.crtc import Crtc
from vmm.devices.debug import DebugConsole, DebugExit, NullDevice
from vmm.devices.i8042 import A20Gate, I8042, SystemControlPortA
from vmm.devices.ide import DiskImage, IdeChannel
from vmm.devices.mc146818 import Mc146818
from vmm.devices.pc_testdev import (IOMEM_BASE, IOMEM_LEN, TestdevFlush, TestdevIomem,
                                    TestdevIoport, TestdevIrq)
from vmm.devices.pci_host import PciHostNoDevices
from vmm.devices.pic8259 import Pic8259Pair
from vmm.devices.pit8254 import Pit8254
from vmm.devices.uart16550 import Uart16550

COM1, COM1_IRQ = 0x3F8, 4
PIT_IRQ, KEYBOARD_IRQ, MOUSE_IRQ, IDE_PRIMARY_IRQ = 0, 1, 12, 14
ISA_IRQS = 16
IDE_PRIMARY, IDE_PRIMARY_CONTROL = 0x1F0, 0x3F6
MAX_DRIVES = 2


class PcBoard:
    """One VM's PC port devices, registered on ``pio``.

    ``on_intr``: the PIC raised INT (the CPU should leave the guest to take it);
    ``on_reconfigure``: a device changed how it can interrupt or observe time;
    ``sink``: serial and 0xE9 console output; ``on_exit``: the guest's isa-debug-exit status;
    ``on_reset``: the guest pulsed the CPU's reset line (i8042 0xFE, port 0x92 bit 0);
    ``drives``: raw disk images for the IDE primary master and slave (no IDE without any);
    ``mmio``: the bus for the board's MMIO device, pc-testdev's scratch page at 0xFF000000.
    The RTC shows the host's time at start-up plus the guest's virtual time since."""

    def __init__(self, pio: Bus, clock, on_intr: Callable[[], None],
                 on_reconfigure: Callable[[], None], sink: Callable[[bytes], None],
                 on_exit: Callable[[int], None], *, on_reset: Callable[[], None] | None = None,
                 drives=(), ram_size: int = 0, mmio: Bus | None = None):
        if len(drives) > MAX_DRIVES:
            raise ValueError(f"the IDE primary channel takes {MAX_DRIVES} drives, "
                             f"not {len(drives)}")
        self.pio = pio
        self.clock = clock
        self.last_output_ns = 0        # when the guest last printed (a typed script's pause)
        sink = self._console(sink)
        self.isa_listeners: list[Callable[[int, bool], None]] = []
        self.pic = Pic8259Pair(on_intr=on_intr)
        self.pit = Pit8254(clock, self.isa_line(PIT_IRQ))
        self.uart = Uart16550(self.isa_line(COM1_IRQ), sink, out2_gates_irq=False)
        self.post = NullDevice("post-0x80")
        self.a20 = A20Gate()
        self.keyboard = I8042(self.isa_line(KEYBOARD_IRQ), self.isa_line(MOUSE_IRQ), a20=self.a20,
                              on_reset=on_reset)
        self.started = time.time()    # the host time the RTC shows at virtual time 0
        self.rtc = Mc146818(lambda: self.started + clock.now_ns() / 1e9, ram_size)
        self.crtc = Crtc()
        self.disks = [DiskImage(path) for path in drives]
        self.ide = IdeChannel(self.isa_line(IDE_PRIMARY_IRQ), *self.disks) if self.disks else None
        self.pic.on_reconfigure = self.pit.on_reconfigure = on_reconfigure
        self._register(on_exit, sink, on_reset)
        if mmio is not None:
            mmio.insert(TestdevIomem(), IOMEM_BASE, IOMEM_LEN)

    def _register(self, on_exit, sink, on_reset) -> None:
        testdev = TestdevIoport()
        windows = [(self.pic.master, 0x20, 2), (self.pic.slave, 0xA0, 2), (self.pit, 0x40, 4),
                   (self.keyboard, 0x60, 5), (self.rtc, 0x70, 2), (self.post, 0x80, 1),
                   (SystemControlPortA(self.a20, on_reset), 0x92, 1),
                   (testdev, 0xE0, 4), (TestdevFlush(), 0xE4, 4), (testdev, 0xE8, 1),
                   (DebugConsole(sink), 0xE9, 1), (DebugExit(on_exit), 0xF4, 4),
                   (self.crtc, 0x3D4, 2), (self.uart, COM1, 8), (PciHostNoDevices(), 0xCF8, 8),
                   (TestdevIrq({n: self.isa_line(n) for n in range(ISA_IRQS)}), 0x2000, 24)]
        if self.ide is not None:
            windows += [(self.ide, IDE_PRIMARY, 8), (self.ide.control, IDE_PRIMARY_CONTROL, 1)]
        for device, base, length in windows:
            self.pio.insert(device, base, length)

    def _console(self, sink: Callable[[bytes], None]) -> Callable[[bytes], None]:
        def write(data: bytes) -> None:
            self.last_output_ns = self.clock.now_ns()
            sink(data)
        return write

    def save_state(self) -> dict:
        """The board's own state (its devices save theirs on the bus)."""
        return {"started": self.started, "last_output_ns": self.last_output_ns,
                "pic": self.pic.save_state()}   # the pair's INT output; each 8259 is on the bus

    def load_state(self, state: dict) -> None:
        self.started, self.last_output_ns = state["started"], state["last_output_ns"]
        self.pic.load_state(state["pic"])

    def isa_line(self, irq: int) -> IrqLine:
        return IrqLine(self._set_isa_irq, irq)

    def _set_isa_irq(self, irq: int, level: bool) -> None:
        self.pic.set_irq(irq, level)
        for listener in self.isa_listeners:
            listener(irq, level)

    def close(self) -> None:
        for disk in self.disks:
            disk.close()
