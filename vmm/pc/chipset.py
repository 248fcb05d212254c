"""The interrupt controllers the hypervisor itself emulates on every PC it builds, under both
architectures: the vCPU's local APIC (0xFEE00000) and the IOAPIC (0xFEC00000) that feeds it. The
APIC is per vCPU, as KVM's in-kernel LAPIC and Hyper-V's hypervisor-virtualized APIC are; the
port devices of vmm/pc/board.py may live in the parent partition.

The local APIC is the vCPU's interrupt controller: it takes the IOAPIC's messages, and the 8259
pair (``extint``) through LINT0 in ExtINT mode (virtual wire, as a BIOS leaves it), so guests that
never touch an APIC see the PIC as before. ISA IRQs reach the IOAPIC as on a PC (MP table): IRQ 0
on pin 2, the others on their own pin.
"""
from __future__ import annotations

from emu.events import GP
from emu.paging import Fault
from vmm.devices.ioapic import IOAPIC_DEFAULT_BASE, IOAPIC_WINDOW, IoApic
from vmm.devices.lapic import APIC_DEFAULT_BASE, APIC_WINDOW, ApicBaseFault, LocalApic

PIT_IRQ_PIN = 2
IA32_APIC_BASE = 0x1B


def isa_pin(irq: int) -> int:
    """The IOAPIC pin an ISA IRQ drives on a PC (the MP table's interrupt override)."""
    return PIT_IRQ_PIN if irq == 0 else irq


class Chipset:
    """The local APIC (the VM's ``irq_chip`` and one of its timers) and the IOAPIC, on
    ``vm.mmio``."""

    def __init__(self, vm, extint):
        self.vm = vm
        self.lapic = vm.lapic = LocalApic(vm.clock, extint=extint, on_intr=vm.kick,
                                          on_relocate=self._relocate)
        self.ioapic = IoApic(self.lapic.receive)
        self.lapic.sources.append(self.ioapic)
        self.lapic.on_eoi = self.ioapic.eoi
        self.lapic.on_reconfigure = self.ioapic.on_reconfigure = vm.reconfigured
        vm.mmio.insert(self.lapic, APIC_DEFAULT_BASE, APIC_WINDOW)
        vm.mmio.insert(self.ioapic, IOAPIC_DEFAULT_BASE, IOAPIC_WINDOW)
        vm.irq_chip = self.lapic
        vm.timers.append(self.lapic)
        vm.msrs[IA32_APIC_BASE] = (self.lapic.read_apic_base, self._write_apic_base)

    def _write_apic_base(self, value: int) -> None:
        """WRMSR IA32_APIC_BASE: reserved bits set are the CPU's #GP(0) (SDM 11.4.4)."""
        try:
            self.lapic.write_apic_base(value)
        except ApicBaseFault:
            raise Fault(GP, 0) from None

    def _relocate(self, old: int, new: int) -> None:
        """IA32_APIC_BASE moved the register page: the window follows it (the old page is then
        unbacked, as on a PC). Not modelled: a page over RAM or another window. A real APIC
        page shadows the RAM under it; this VMM maps MMIO beside RAM only, so there the APIC
        has no window (its registers are unreachable, RAM shows through) until moved again."""
        mmio = self.vm.mmio
        if any(device is self.lapic for _, _, device in mmio.entries()):
            mmio.remove(self.lapic)
        if new >= self.vm.memory.size and not any(
                base < new + APIC_WINDOW and new < base + length
                for base, length, _ in mmio.entries()):
            mmio.insert(self.lapic, new, APIC_WINDOW)
        self.vm.cpu.flush_tlb()

    def set_isa_irq(self, irq: int, level: bool) -> None:
        """An ISA IRQ line changed (the board's ``isa_listeners``)."""
        self.ioapic.set_irq(isa_pin(irq), level)
