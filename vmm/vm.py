"""One virtual machine's hardware: guest RAM, the CPU, the port-I/O and MMIO buses, the interrupt
controller, the timers that drive virtual time, and the host input that can wake a halted CPU.

Which devices sit on the buses, and in which process they run, is the hypervisor's choice.
"""
from __future__ import annotations

import time
from typing import Callable, Protocol

from emu.cpu import Cpu
from emu.memory import GuestMemory
from emu.paging import LinearMemory
from vmm.bus import Bus
from vmm.clock import InstructionClock, WallClock

DEFAULT_RAM = 32 << 20


class InterruptController(Protocol):
    def all_masked(self) -> bool: ...
    def has_interrupt(self) -> bool: ...
    def acknowledge(self) -> int: ...


class Timer(Protocol):
    def counting(self) -> bool: ...
    def next_deadline_ns(self) -> int | None: ...
    def update(self) -> None: ...


class Vm:
    """Guest RAM + CPU + buses; devices are attached by a hypervisor."""

    def __init__(self, ram_size: int = DEFAULT_RAM, wall_clock: bool = False):
        self.memory = GuestMemory(ram_size)
        self.cpu = Cpu(self.memory)
        self.lin = LinearMemory(self.memory, self.cpu.cr)
        self.pio = Bus("pio")
        self.mmio = Bus("mmio", on_insert=self.cpu.map_mmio)
        self.lapic = None       # the vCPU's local APIC, once a chipset puts one in (vmm/pc)
        self.clock = WallClock() if wall_clock else InstructionClock(self.cpu)
        self.irq_chip: InterruptController | None = None
        # MSRs the platform answers (IA32_APIC_BASE): index -> (read(), write(value))
        self.msrs: dict[int, tuple[Callable[[], int], Callable[[int], None]]] = {}
        self.timers: list[Timer] = []
        self.reconfigurations = 0
        self.input_sources: list = []
        self.identity: tuple[int, str] | None = None  # (id, name) when several VMs share the CPU
        # called after a snapshot is restored into this VM: caches of guest state kept outside
        # the CPU (an MMU's shadow, event delivery's) must be dropped (vmm/snapshot/machine.py)
        self.restore_hooks: list[Callable[[], None]] = []

    def read_msr(self, index: int) -> int:
        """RDMSR as the platform answers it: a device's MSR, else the CPU's own."""
        entry = self.msrs.get(index)
        return entry[0]() if entry is not None else self.cpu.msr_read(index)

    def write_msr(self, index: int, value: int) -> None:
        """WRMSR; a device may refuse the value with the CPU's #GP (emu.paging.Fault)."""
        entry = self.msrs.get(index)
        if entry is not None:
            entry[1](value)
        else:
            self.cpu.msr_write(index, value)

    def kick(self) -> None:
        """An interrupt line rose: leave the guest at the next boundary so it can be injected."""
        self.cpu.stop()

    def load(self, image: bytes, address: int) -> None:
        self.memory.write(address, image)

    def reconfigured(self) -> None:
        """A device changed how it can interrupt or observe time. An uncounted run must then
        end (synchronously, from the hook that programmed the device) so that counting starts.
        Counted in ``reconfigurations``: a timer deadline known before stays good until then."""
        self.reconfigurations += 1
        if not self.cpu.counting and not self.quiescent():
            self.cpu.stop()

    def quiescent(self) -> bool:
        """Nothing asynchronous can happen: no timer counts (so time is unobservable) and every
        interrupt line is masked. Only then may the CPU run uncounted, and so imprecisely
        stoppable: Unicorn finishes the current block after a stop requested from a hook."""
        return self.irq_chip.all_masked() and not any(t.counting() for t in self.timers)

    def next_deadline_ns(self) -> int | None:
        deadlines = [d for d in (t.next_deadline_ns() for t in self.timers) if d is not None]
        return min(deadlines, default=None)

    def update_timers(self) -> None:
        for timer in self.timers:
            timer.update()

    def poll_input(self) -> None:
        """Feed host input while the CPU idles (guests also pull it by reading the UART): input
        arrives at points fixed by the guest's own execution, so replays see it at the same time."""
        for source in self.input_sources:
            source.poll()

    def input_pending(self) -> bool:
        return any(source.alive() for source in self.input_sources)

    def wait_until(self, deadline_ns: int | None) -> None:
        """Wall-clock idling: sleep until the next timer event (or briefly, for input)."""
        now = self.clock.now_ns()
        pause = 0.01 if deadline_ns is None else max(0, deadline_ns - now) / 1e9
        time.sleep(min(pause, 0.01))

    def close(self) -> None:
        self.cpu.close()
        self.memory.close()
