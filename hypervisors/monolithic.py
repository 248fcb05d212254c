"""The monolithic hypervisor (VMware ESX style): device models are the hypervisor's own objects,
called directly from the I/O exit handler in the same process.

It puts the PC board's port devices (vmm/pc/board.py) on the VM's own port bus and the chipset's
APICs (vmm/pc/chipset.py) and pc-testdev's scratch page on its MMIO bus, picks the engine and
runs the vCPU. (Under micro that page is left out: its MMIO could not reach the parent.)

Consolidation (``run_side_by_side``): several such VMs, each with its own CPU, board and
devices, share the one physical CPU in this process on the grants of the proportional-share
scheduler (vmm/cpusched), as ESX's VMkernel schedules its worlds.
"""
from __future__ import annotations

from typing import Callable

from hypervisors.images import GuestImage, hand_over
from vmm.cpusched.dispatch import VcpuClient, dispatch
from vmm.cpusched.scheduler import ProportionalShare
from vmm.engines import make_engine
from vmm.exits import EXIT_HANDLERS
from vmm.pc.board import PcBoard
from vmm.pc.chipset import Chipset
from vmm.pc.host_input import ScriptedInput, StreamInput
from vmm.run_state import RunResult, RunState
from vmm.snapshot import machine
from vmm.vcpu import Vcpu
from vmm.vm import DEFAULT_RAM, Vm


class MonolithicHypervisor:
    """Runs one guest with its devices inside the hypervisor process."""
    name = "monolithic"
    handlers = EXIT_HANDLERS

    def __init__(self, engine: str = "trap", ram_size: int = DEFAULT_RAM,
                 sink: Callable[[bytes], None] = lambda data: None, input_data: bytes = b"",
                 input_stream=None, observers=(), timeout: float | None = None,
                 max_exits: int | None = None, wall_clock: bool = False, exit_on: str = "",
                 drives=(), ept: bool = True, apicv: bool = True):
        engine_model = make_engine(engine, exit_on, ept, apicv)
        self.vm = vm = Vm(ram_size, wall_clock)
        try:
            self.board = PcBoard(vm.pio, vm.clock, vm.kick, vm.reconfigured, sink,
                                 self._guest_exit, on_reset=self._guest_reset, drives=drives,
                                 ram_size=ram_size, mmio=vm.mmio)
        except (OSError, ValueError):
            vm.close()
            raise
        self.chipset = Chipset(vm, extint=self.board.pic)
        self.board.isa_listeners.append(self.chipset.set_isa_irq)
        vm.timers.append(self.board.pit)
        if input_data or input_stream is not None:
            uart = self.board.uart
            line = (StreamInput(uart, input_stream) if input_stream is not None
                    else ScriptedInput(uart, input_data, vm.clock,
                                       lambda: self.board.last_output_ns,
                                       lambda: self.vcpu.input_done()))
            uart.before_read = line.poll
            vm.input_sources.append(line)
            vm.timers.append(line)
        self.vcpu = Vcpu(self.vm, engine_model, self.handlers, observers, timeout,
                         max_exits, wall_clock)
        self.board.a20.on_change = self.vcpu.engine.mmu.set_a20

    def _guest_exit(self, value: int) -> None:
        self.vcpu.guest_exit(value)

    def _guest_reset(self) -> None:
        self.vcpu.guest_reset()

    def boot(self, image: GuestImage) -> None:
        hand_over(self.vm, image)
        self.vcpu.engine.reset()

    def run(self, image: GuestImage) -> RunResult:
        self.boot(image)
        return self.vcpu.run()

    def client(self, name: str) -> VcpuClient:
        """This VM's vCPU as a scheduler client; a failure of its VMM code ends this VM alone."""
        return VcpuClient(name, self.vcpu, self._failed)

    def _failed(self, exc: BaseException) -> None:
        self.vcpu.finish(RunState.VMM_ERROR, f"{type(exc).__name__}: {exc}")

    def save_devices(self) -> dict:
        """Every device's state, for a snapshot (vmm/snapshot/machine.py)."""
        return machine.save_devices(self.vm, self.board)

    def load_devices(self, state: dict) -> None:
        machine.load_devices(self.vm, self.board, state)

    def close(self) -> None:
        self.board.close()
        self.vm.close()


def run_side_by_side(machines: list[tuple[MonolithicHypervisor, GuestImage]],
                     scheduler: ProportionalShare) -> list[RunResult]:
    """Boot every VM, then run them all to their end on one CPU, one at a time, on the
    scheduler's grants (its accounts name the VMs in the same order); results in that order."""
    for number, (hypervisor, image) in enumerate(machines, 1):
        if len(machines) > 1:
            hypervisor.vm.identity = (number, image.name)
        hypervisor.boot(image)
    dispatch([hypervisor.client(name) for (hypervisor, _), name
              in zip(machines, scheduler.accounts)], scheduler)
    return [hypervisor.vcpu.result() for hypervisor, _ in machines]
