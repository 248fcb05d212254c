"""APIC virtualization (Intel SDM Vol. 3C ch. 29, "APIC Virtualization and Virtual Interrupts"):
what a guest access to its local APIC's 4 KiB page costs when the VMM has help for it.

Under vtx the secondary processor-based controls decide (``VmxControls``):

- "virtualize APIC accesses" off (``--apicv off``): the page is MMIO like any other, and every
  access is an EPT_VIOLATION exit the VMM carries out against the APIC model.
- "virtualize APIC accesses" on, "APIC-register virtualization" on (the default): a read that
  lies entirely within one of the registers SDM 29.4.2 lists (ID, version, TPR, EOI, LDR, DFR,
  SVR, ISR, TMR, IRR, ESR, ICR, the LVTs, initial count, divide configuration) is served from the
  virtual-APIC page with no VM exit. Here the virtual-APIC page is the APIC model itself: the VMM
  keeps it current as KVM's APICv keeps its vAPIC page, so reading the model is reading the page.
  Any other read (APR, PPR, RRD, the timer's current count, an access across registers) is an
  APIC-access VM exit (reason 44; qualification: the page offset in bits 11:0, access type 0 =
  linear read in bits 15:12, SDM Table 28-6). A 32-bit write at the offset of one of the
  registers SDM 29.4.3.2 lists goes to the virtual-APIC page and is followed by an APIC-write VM
  exit (reason 56, trap-like, qualification: the offset), whose handler makes the register's
  effect happen (the EOI, the IPI, the timer); any other write is an APIC-access exit with
  access type 1. Not modelled: TPR shadowing, virtual-interrupt delivery and EOI
  virtualization (every EOI is an APIC-write exit); fetches from the page.
- "virtualize APIC accesses" on alone: every access is an APIC-access exit.

Unicorn does not sync EIP before an MMIO callback, so an exit's RIP is the start of the
translation block (as for EPT violations); the trap-like APIC-write exit has the same RIP.

Trap and bt have no hardware help: every APIC access is intercepted (a hidden page fault in a
classic VMM). Their honest equivalent of register virtualization is the VMM's fast path for it
(KVM's in-kernel LAPIC answers a read in the exit handler, without going out to the device
model): a read of the same registers is answered from the model inside the intercept, with no
exit record, and counted as an intercepted read served in place (``--stats``). Writes and the
other reads stay EPT_VIOLATION exits. Native has no intercepts: the access reaches the model.
"""
from __future__ import annotations

from vmm.vmcs import ExitReason, VmExit

PAGE_OFFSET = 0xFFF
# Register offsets (SDM Table 11-1; engines do not see the device model, vmm/devices/lapic.py).
ID, VERSION, TPR, EOI, LDR, DFR, SVR = 0x020, 0x030, 0x080, 0x0B0, 0x0D0, 0x0E0, 0x0F0
ISR, TMR, IRR, ESR, ICR_LOW, ICR_HIGH = 0x100, 0x180, 0x200, 0x280, 0x300, 0x310
LVT_TIMER, LVT_ERROR = 0x320, 0x370
TIMER_INITIAL_COUNT, TIMER_DIVIDE_CONFIG = 0x380, 0x3E0
APIC_ACCESS, APIC_WRITE = ExitReason.APIC_ACCESS, ExitReason.APIC_WRITE
# Access types of an APIC-access exit qualification, bits 15:12 (SDM Table 28-6).
LINEAR_READ, LINEAR_WRITE = 0, 1
_LVTS = range(LVT_TIMER, LVT_ERROR + 0x10, 0x10)
_BANKS = [reg for first in (ISR, TMR, IRR) for reg in range(first, first + 0x80, 0x10)]
# SDM 29.4.2: the registers whose reads are virtualized with APIC-register virtualization.
READ_VIRTUALIZED = frozenset([ID, VERSION, TPR, EOI, LDR, DFR, SVR, ESR, ICR_LOW, ICR_HIGH,
                              TIMER_INITIAL_COUNT, TIMER_DIVIDE_CONFIG, *_LVTS, *_BANKS])
# SDM 29.4.3.2: the registers whose 32-bit writes are virtualized (APIC-write emulation).
WRITE_VIRTUALIZED = frozenset([ID, TPR, EOI, LDR, DFR, SVR, ESR, ICR_LOW, ICR_HIGH,
                               TIMER_INITIAL_COUNT, TIMER_DIVIDE_CONFIG, *_LVTS])
# Every (offset, size) of a read that lies within the first 4 bytes of one of those registers.
READS = frozenset((reg + first, size) for reg in READ_VIRTUALIZED for size in (1, 2, 4)
                  for first in range(4 - size + 1))


def write_virtualized(offset: int, size: int) -> bool:
    """A 32-bit write at the offset of a register SDM 29.4.3.2 lists."""
    return size == 4 and offset in WRITE_VIRTUALIZED


def access_qualification(offset: int, write: bool) -> int:
    """An APIC-access exit's qualification for a linear data access (SDM Table 28-6)."""
    return offset | (LINEAR_WRITE if write else LINEAR_READ) << 12


class ApicAccess:
    """One vCPU's APIC page under an engine that intercepts it. ``hardware``: VT-x's controls
    (``access_exits``: virtualize APIC accesses; ``register_virtualization``); otherwise the
    software VMM's fast path for the reads of READ_VIRTUALIZED (``register_virtualization``)."""

    def __init__(self, lapic, take_exit, rip, *, hardware: bool, access_exits: bool,
                 register_virtualization: bool):
        self.lapic = lapic
        self.take_exit = take_exit
        self.rip = rip
        self.hardware = hardware
        self.access_exits = access_exits
        self.register_virtualization = register_virtualization
        self.virtualized_reads = 0

    def read(self, address: int, size: int, exit_for) -> int:
        """A read of the APIC page: virtualized, an APIC-access exit, or ``exit_for``'s."""
        offset = address & PAGE_OFFSET
        if self.register_virtualization and (offset, size) in READS:
            self.virtualized_reads += 1
            return self.lapic.read(offset, size)
        if self.access_exits:
            exit = self._exit(APIC_ACCESS, access_qualification(offset, False), address, size,
                              (1 << 8 * size) - 1)
        else:
            exit = exit_for(address, size, None)
        self.take_exit(exit)
        return exit.value

    def write(self, address: int, size: int, value: int, exit_for) -> None:
        """A write to the APIC page: an APIC-write exit, an APIC-access exit, or ``exit_for``'s."""
        offset = address & PAGE_OFFSET
        if not self.access_exits:
            exit = exit_for(address, size, value)
        elif self.register_virtualization and write_virtualized(offset, size):
            exit = self._exit(APIC_WRITE, offset, address, size, value)
        else:
            exit = self._exit(APIC_ACCESS, access_qualification(offset, True), address, size, value)
        self.take_exit(exit)

    def _exit(self, reason: ExitReason, qualification: int, address: int, size: int,
              value: int) -> VmExit:
        exit = VmExit(reason, self.rip(), qualification)
        exit.guest_physical, exit.size, exit.value = address, size, value
        return exit

    def report(self) -> str:
        """The --stats line: how the APIC page was handled."""
        if self.hardware:
            mode = ("virtualize APIC accesses + APIC-register virtualization"
                    if self.register_virtualization else "virtualize APIC accesses"
                    if self.access_exits else "off (EPT violations)")
            return (f"APIC virtualization: {mode}; {self.virtualized_reads} reads served from "
                    "the virtual-APIC page without a VM exit")
        if not self.register_virtualization:
            return "APIC virtualization: off (every APIC access an EPT violation)"
        return (f"APIC virtualization (software fast path): {self.virtualized_reads} intercepted "
                "reads served in place, without an exit record")
