"""The PC board both hypervisors build a VM's legacy devices from (the one definition of where
each sits): an 8259A PIC pair (master 0x20, slave 0xA0), an 8254 PIT on IRQ 0 (0x40), a 16550
UART at COM1 on IRQ 4 (0x3F8), QEMU's isa-debug-exit (0xF4), the port-0xE9 console and a null
device on the POST port 0x80.

The board puts its devices on whatever port bus it is given: the VM's own bus in the monolithic
hypervisor, or the parent partition's bus for one child under micro (crosvm's ProxyDevice
pattern: one set of device classes, two placements).
"""
from __future__ import annotations

from typing import Callable

from vmm.bus import Bus
from vmm.devices.debug import DebugConsole, DebugExit, NullDevice
from vmm.devices.pic8259 import Pic8259Pair
from vmm.devices.pit8254 import Pit8254
from vmm.devices.uart16550 import Uart16550

COM1, COM1_IRQ = 0x3F8, 4
PIT_IRQ = 0


class PcBoard:
    """One VM's legacy PC devices, registered on ``pio``.

    ``on_intr``: the PIC raised INT (the CPU should leave the guest to take it);
    ``on_reconfigure``: a device changed how it can interrupt or observe time;
    ``sink``: serial and 0xE9 console output; ``on_exit``: the guest's isa-debug-exit status."""

    def __init__(self, pio: Bus, clock, on_intr: Callable[[], None],
                 on_reconfigure: Callable[[], None], sink: Callable[[bytes], None],
                 on_exit: Callable[[int], None]):
        self.pio = pio
        self.pic = Pic8259Pair(on_intr=on_intr)
        self.pit = Pit8254(clock, self.pic.irq_line(PIT_IRQ))
        self.uart = Uart16550(self.pic.irq_line(COM1_IRQ), sink)
        self.post = NullDevice("post-0x80")
        self.pic.on_reconfigure = self.pit.on_reconfigure = on_reconfigure
        for device, base, length in ((self.pic.master, 0x20, 2), (self.pic.slave, 0xA0, 2),
                                     (self.pit, 0x40, 4), (self.uart, COM1, 8),
                                     (DebugExit(on_exit), 0xF4, 4), (DebugConsole(sink), 0xE9, 1),
                                     (self.post, 0x80, 1)):
            pio.insert(device, base, length)
