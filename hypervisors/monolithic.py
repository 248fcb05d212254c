"""The monolithic hypervisor (VMware ESX style): device models are the hypervisor's own objects,
called directly from the I/O exit handler in the same process.

It builds the PC platform (8259 PIC pair, 8254 PIT, 16550 UART at COM1, debug-exit port 0xF4,
port-0xE9 console, a null device on the POST port 0x80), picks the engine and runs the vCPU.
"""
from __future__ import annotations

from typing import Callable

from hypervisors.images import GuestImage, hand_over
from vmm.platform.host_input import ScriptedInput, StreamInput
from vmm.devices.debug import DebugConsole, DebugExit, NullDevice
from vmm.devices.pic8259 import Pic8259Pair
from vmm.devices.pit8254 import Pit8254
from vmm.devices.uart16550 import Uart16550
from vmm.engines import make_engine
from vmm.exits import EXIT_HANDLERS
from vmm.run_state import RunResult
from vmm.vcpu import Vcpu
from vmm.vm import DEFAULT_RAM, Vm

COM1, COM1_IRQ = 0x3F8, 4


class Platform:
    """The devices of one VM, registered on its port-I/O bus."""

    def __init__(self, vm: Vm, sink: Callable[[bytes], None], on_exit: Callable[[int], None]):
        self.pic = Pic8259Pair(on_intr=vm.kick)
        self.pit = Pit8254(vm.clock, self.pic.irq_line(0))
        self.uart = Uart16550(self.pic.irq_line(COM1_IRQ), sink)
        self.post = NullDevice("post-0x80")
        vm.irq_chip = self.pic
        vm.timers.append(self.pit)
        self.pic.on_reconfigure = self.pit.on_reconfigure = vm.reconfigured
        for device, base, length in ((self.pic.master, 0x20, 2), (self.pic.slave, 0xA0, 2),
                                     (self.pit, 0x40, 4), (self.uart, COM1, 8),
                                     (DebugExit(on_exit), 0xF4, 4), (DebugConsole(sink), 0xE9, 1),
                                     (self.post, 0x80, 1)):
            vm.pio.insert(device, base, length)


class MonolithicHypervisor:
    """Runs one guest with its devices inside the hypervisor process."""
    name = "monolithic"
    handlers = EXIT_HANDLERS

    def __init__(self, engine: str = "trap", ram_size: int = DEFAULT_RAM,
                 sink: Callable[[bytes], None] = lambda data: None, input_data: bytes = b"",
                 input_stream=None, observers=(), timeout: float | None = None, max_exits: int | None = None,
                 wall_clock: bool = False, exit_on: str = ""):
        engine_model = make_engine(engine, exit_on)
        self.vm = Vm(ram_size, wall_clock)
        self.platform = Platform(self.vm, sink, self._guest_exit)
        if input_data or input_stream is not None:
            uart = self.platform.uart
            line = (StreamInput(uart, input_stream) if input_stream is not None
                    else ScriptedInput(uart, input_data))
            uart.before_read = line.poll
            self.vm.input_sources.append(line)
        self.vcpu = Vcpu(self.vm, engine_model, self.handlers, observers, timeout,
                         max_exits, wall_clock)

    def _guest_exit(self, value: int) -> None:
        self.vcpu.guest_exit(value)

    def boot(self, image: GuestImage) -> None:
        hand_over(self.vm, image)
        self.vcpu.engine.reset()

    def run(self, image: GuestImage) -> RunResult:
        self.boot(image)
        return self.vcpu.run()

    def close(self) -> None:
        self.vm.close()
