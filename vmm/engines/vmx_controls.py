"""VM-execution controls of the VMCS (Intel SDM Vol. 3, ch. 25.6 and 26.1-26.3): which guest
actions cause VM exits under the vtx engine, and the VM-entry event-injection fields.

Defaults follow a VMM with EPT (as KVM sets up a guest): CPUID, VMCALL, HLT and all port I/O exit;
CR3 loads, INVLPG, MSRs (MSR bitmaps with nothing set), descriptor-table instructions and the
exception bitmap do not; the local APIC's page is virtualized ("virtualize APIC accesses" and
"APIC-register virtualization", SDM 25.6.2 and ch. 29: engines/apic_access.py), which
``without_apicv`` (--apicv off) turns off. ``parse_exit_on`` reads the command line's
``--exit-on`` list.
"""
from __future__ import annotations

from dataclasses import dataclass, field

CR0_TS = 1 << 3


@dataclass
class VmxControls:
    """Pin-based, processor-based and secondary controls, bitmaps, masks and read shadows."""
    exception_bitmap: int = 0               # bit n set: exception n exits (EXCEPTION_NMI)
    unconditional_io_exiting: bool = True
    use_io_bitmaps: bool = False
    io_bitmap: set[int] = field(default_factory=set)  # ports that exit (bitmaps A and B)
    use_msr_bitmaps: bool = True
    msr_read_bitmap: set[int] = field(default_factory=set)   # MSRs whose RDMSR exits
    msr_write_bitmap: set[int] = field(default_factory=set)  # MSRs whose WRMSR exits
    cr0_guest_host_mask: int = 0
    cr0_read_shadow: int = 0
    cr4_guest_host_mask: int = 0
    cr4_read_shadow: int = 0
    cr3_load_exiting: bool = False
    cr3_store_exiting: bool = False
    hlt_exiting: bool = True
    invlpg_exiting: bool = False
    mov_dr_exiting: bool = False
    wbinvd_exiting: bool = False
    descriptor_table_exiting: bool = False
    enable_ept: bool = True                 # secondary control; off: shadow paging (see below)
    virtualize_apic_accesses: bool = True   # secondary: the APIC page's accesses are APIC exits
    apic_register_virtualization: bool = True  # secondary: most APIC reads exit-free (ch. 29)
    interrupt_window_exiting: bool = False
    # VM-entry interruption-information field (SDM 24.8.3) and its error code.
    entry_interruption_info: int = 0
    entry_exception_error_code: int = 0

    # ----- the SDM's exit conditions ------------------------------------------------------------
    def io_exits(self, port: int, size: int) -> bool:
        if self.use_io_bitmaps:
            return any((port + i) & 0xFFFF in self.io_bitmap for i in range(size))
        return self.unconditional_io_exiting

    def msr_exits(self, msr: int, write: bool) -> bool:
        if not self.use_msr_bitmaps:
            return True
        in_range = msr <= 0x1FFF or 0xC0000000 <= msr <= 0xC0001FFF
        return not in_range or msr in (self.msr_write_bitmap if write else self.msr_read_bitmap)

    def without_ept(self) -> None:
        """First-generation VT-x (no EPT): the VMM keeps shadow page tables, so it must see
        every CR3 load and INVLPG (the guest changes address space or drops a translation) and
        every #PF (a fault on a shadow entry may be the VMM's own, a hidden page fault)."""
        self.enable_ept = False
        self.cr3_load_exiting = self.invlpg_exiting = True
        self.exception_bitmap |= 1 << 14

    def without_apicv(self) -> None:
        """No APIC virtualization: the APIC page is MMIO, every access an EPT violation."""
        self.virtualize_apic_accesses = self.apic_register_virtualization = False

    def exception_exits(self, vector: int) -> bool:
        return bool(self.exception_bitmap >> vector & 1)

    def cr_write_exits(self, cr: int, value: int) -> bool:
        """MOV to CR0/CR4 exits when a bit the host owns would differ from its read shadow."""
        if cr == 3:
            return self.cr3_load_exiting
        mask, shadow = self.mask_and_shadow(cr)
        return bool((value ^ shadow) & mask)

    def clts_exits(self) -> bool:
        return bool(self.cr0_guest_host_mask & self.cr0_read_shadow & CR0_TS)

    def lmsw_exits(self, source: int) -> bool:
        mask = self.cr0_guest_host_mask & 0xF
        return bool((source ^ self.cr0_read_shadow) & mask & ~1) or bool(
            mask & 1 and source & 1 and not self.cr0_read_shadow & 1)

    def mask_and_shadow(self, cr: int) -> tuple[int, int]:
        if cr == 0:
            return self.cr0_guest_host_mask, self.cr0_read_shadow
        return self.cr4_guest_host_mask, self.cr4_read_shadow


class ControlError(ValueError):
    """A --exit-on item that names no control."""


EXIT_ON_NAMES = ("cr3", "cr3-store", "cr0=MASK", "cr4=MASK", "invlpg", "hlt", "io", "io=PORT",
                 "msr", "msr=NUMBER", "dt", "dr", "wbinvd", "exception=VECTOR")


def _number(text: str, what: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise ControlError(f"--exit-on {what}: {text!r} is not a number") from None


def apply_exit_on(controls: VmxControls, items: str) -> VmxControls:
    """Turn on the exits named in a comma-separated --exit-on list."""
    for item in filter(None, (part.strip() for part in items.split(","))):
        name, _, arg = item.partition("=")
        if name == "cr3":
            controls.cr3_load_exiting = True
        elif name == "cr3-store":
            controls.cr3_store_exiting = True
        elif name in ("cr0", "cr4") and arg:
            mask = _number(arg, name)
            if name == "cr0":
                controls.cr0_guest_host_mask |= mask
            else:
                controls.cr4_guest_host_mask |= mask
        elif name == "io" and arg:
            controls.use_io_bitmaps = True
            controls.io_bitmap.add(_number(arg, name) & 0xFFFF)
        elif name == "msr" and arg:
            controls.msr_read_bitmap.add(_number(arg, name))
            controls.msr_write_bitmap.add(_number(arg, name))
        elif name == "exception" and arg:
            controls.exception_bitmap |= 1 << (_number(arg, name) & 31)
        elif not arg and name in FLAG_CONTROLS:
            FLAG_CONTROLS[name](controls)
        else:
            raise ControlError(f"--exit-on: unknown exit {item!r}; choose from "
                               f"{', '.join(EXIT_ON_NAMES)}")
    return controls


def _all_msrs(controls: VmxControls) -> None:
    controls.use_msr_bitmaps = False


def _flag(name: str):
    def turn_on(controls: VmxControls) -> None:
        setattr(controls, name, True)
    return turn_on


FLAG_CONTROLS = {"invlpg": _flag("invlpg_exiting"), "hlt": _flag("hlt_exiting"),
                 "io": _flag("unconditional_io_exiting"), "msr": _all_msrs,
                 "dt": _flag("descriptor_table_exiting"), "dr": _flag("mov_dr_exiting"),
                 "wbinvd": _flag("wbinvd_exiting")}
