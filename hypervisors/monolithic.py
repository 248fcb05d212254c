"""The monolithic hypervisor (VMware ESX style): device models are the hypervisor's own objects,
called directly from the I/O exit handler in the same process.

It puts the PC board's devices (vmm/pc/board.py) on the VM's own port bus, picks the engine and
runs the vCPU.
"""
from __future__ import annotations

from typing import Callable

from hypervisors.images import GuestImage, hand_over
from vmm.engines import make_engine
from vmm.exits import EXIT_HANDLERS
from vmm.pc.board import PcBoard
from vmm.pc.host_input import ScriptedInput, StreamInput
from vmm.run_state import RunResult
from vmm.vcpu import Vcpu
from vmm.vm import DEFAULT_RAM, Vm


class MonolithicHypervisor:
    """Runs one guest with its devices inside the hypervisor process."""
    name = "monolithic"
    handlers = EXIT_HANDLERS

    def __init__(self, engine: str = "trap", ram_size: int = DEFAULT_RAM,
                 sink: Callable[[bytes], None] = lambda data: None, input_data: bytes = b"",
                 input_stream=None, observers=(), timeout: float | None = None, max_exits: int | None = None,
                 wall_clock: bool = False, exit_on: str = ""):
        engine_model = make_engine(engine, exit_on)
        self.vm = vm = Vm(ram_size, wall_clock)
        self.board = PcBoard(vm.pio, vm.clock, vm.kick, vm.reconfigured, sink, self._guest_exit)
        vm.irq_chip = self.board.pic
        vm.timers.append(self.board.pit)
        if input_data or input_stream is not None:
            uart = self.board.uart
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
