"""What a PC BIOS leaves in memory for the OS it boots: the BIOS data area (IBM PC/AT BIOS data
area at 0x400 and the extended BIOS data area), the Intel MultiProcessor Specification 1.4 tables
(floating pointer "_MP_" and "PCMP" configuration table), the PC memory map, and the
boot-sector hand-over (sector 0 at 0000:7C00 with DL = the boot drive).

Values follow what SeaBIOS 1.16 leaves under QEMU 7.2 (measured from a boot sector: EBDA segment
0x9FC0, base memory 639 KiB, PIC masks 0xB8/0x8E) for the devices this platform has: one CPU,
one IOAPIC, COM1, a CGA text screen, one hard disk; no floppy, mouse or printer.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from vmm.pc.handover import BootError, HandOver, check_in_ram, real_mode_handover

# ----- memory layout below 1 MiB -----------------------------------------------------------------
IVT_BASE = 0x0000
BDA_BASE = 0x0400               # BIOS data area, 256 bytes
BDA_END = 0x0500
BOOT_ADDRESS = 0x7C00           # where sector 0 goes; the stack grows down from here
BOOT_DRIVE = 0x80               # first hard disk, in DL
SECTOR_SIZE = 512
BOOT_SIGNATURE = b"\x55\xAA"    # bytes 510-511 of a boot sector
EBDA_BASE = 0x9FC00             # extended BIOS data area: the last KiB of base memory
EBDA_KIB = 1
BASE_MEMORY_KIB = EBDA_BASE // 1024  # 639: conventional memory the BIOS reports (INT 12h, 0x413)
VGA_BASE = 0xA0000              # the 640 KiB hole: video memory, option ROMs, the BIOS
BIOS_ROM_BASE = 0xF0000         # the system BIOS segment (F-segment), 64 KiB
HIGH_MEMORY = 0x100000

# Our "ROM" contents in the F-segment (ordinary RAM here).
FSEG_GDT = 0xF0000              # a flat GDT for protected-mode hand-overs (see multiboot.py)
MP_FLOATING_ADDR = 0xF0100      # MP floating pointer structure (16-byte aligned)
MP_CONFIG_ADDR = 0xF0110        # MP configuration table

# BIOS data area fields (offsets from 0x400).
BDA_COM_PORTS = 0x00            # 4 words: COM1-COM4 I/O bases
BDA_LPT_PORTS = 0x08            # 3 words: LPT1-LPT3
BDA_EBDA_SEGMENT = 0x0E         # word: EBDA segment
BDA_EQUIPMENT = 0x10            # word: equipment list (INT 11h)
BDA_MEMORY_KIB = 0x13           # word: base memory size in KiB (INT 12h)
BDA_VIDEO_MODE = 0x49           # byte: current video mode
BDA_VIDEO_COLUMNS = 0x4A        # word: text columns
BDA_VIDEO_PAGE_SIZE = 0x4C      # word: bytes per page
BDA_CRTC_BASE = 0x63            # word: CRT controller I/O base (0x3D4 colour)
BDA_HARD_DISKS = 0x75           # byte: number of hard disks
BDA_VIDEO_ROWS = 0x84           # byte: rows - 1

COM1_BASE = 0x3F8
EQUIP_FPU = 1 << 1
EQUIP_VIDEO_80X25_COLOR = 0b10 << 4
EQUIP_SERIAL_SHIFT = 9
EQUIPMENT = EQUIP_FPU | EQUIP_VIDEO_80X25_COLOR | (1 << EQUIP_SERIAL_SHIFT)  # 0x0222

# ----- the 8259 pair as a BIOS leaves it (the board programs the PICs with these) ------------
PIC_MASTER_VECTOR_BASE = 0x08   # IRQ 0-7 -> INT 08h-0Fh
PIC_SLAVE_VECTOR_BASE = 0x70    # IRQ 8-15 -> INT 70h-77h
PIC_MASTER_MASK = 0xB8          # IRQ 0 timer, 1 keyboard, 2 cascade, 6 floppy unmasked
PIC_SLAVE_MASK = 0x8E           # IRQ 8 RTC, 12 mouse, 13 FPU, 14 IDE unmasked
# The initialisation a BIOS performs, as (port, value) writes: ICW1 (edge, cascade, ICW4
# needed), ICW2 (vector base), ICW3 (master: slave on IR2; slave: cascade identity 2), ICW4
# (8086 mode, normal EOI), then OCW1 (the masks above).
PIC_INIT_SEQUENCE = (
    (0x20, 0x11), (0x21, PIC_MASTER_VECTOR_BASE), (0x21, 0x04), (0x21, 0x01),
    (0xA0, 0x11), (0xA1, PIC_SLAVE_VECTOR_BASE), (0xA1, 0x02), (0xA1, 0x01),
    (0x21, PIC_MASTER_MASK), (0xA1, PIC_SLAVE_MASK),
)

# ----- PC memory map (E820 / Multiboot mmap types) ---------------------------------------------
MEMORY_AVAILABLE = 1
MEMORY_RESERVED = 2


def memory_map(ram_size: int) -> list[tuple[int, int, int]]:
    """The PC's physical memory map for ``ram_size`` bytes of RAM, as (base, length, type):
    conventional memory up to the EBDA, the EBDA and the system BIOS reserved, the VGA/option-ROM
    window absent (not RAM to the OS), and everything from 1 MiB to the top of RAM available."""
    if ram_size < HIGH_MEMORY:
        raise BootError(f"a PC needs at least 1 MiB of RAM, not {ram_size:#x} bytes")
    entries = [
        (0, EBDA_BASE, MEMORY_AVAILABLE),
        (EBDA_BASE, VGA_BASE - EBDA_BASE, MEMORY_RESERVED),
        (BIOS_ROM_BASE, HIGH_MEMORY - BIOS_ROM_BASE, MEMORY_RESERVED),
    ]
    if ram_size > HIGH_MEMORY:
        entries.append((HIGH_MEMORY, ram_size - HIGH_MEMORY, MEMORY_AVAILABLE))
    return entries


# Regions below 1 MiB a loader must not put a guest's image over: the IVT and BDA, and
# everything from the EBDA to 1 MiB (EBDA, video memory, ROMs, our F-segment tables).
FIRMWARE_REGIONS = (
    (IVT_BASE, BDA_END, "the real-mode IVT and BIOS data area"),
    (EBDA_BASE, HIGH_MEMORY, "the EBDA, video memory and BIOS ROM area (0x9FC00-0xFFFFF)"),
)


def firmware_region_at(start: int, end: int) -> str | None:
    """The description of a firmware region that [start, end) overlaps, or None."""
    for lo, hi, what in FIRMWARE_REGIONS:
        if start < hi and lo < end:
            return what
    return None


# ----- BIOS data area ----------------------------------------------------------------------------
def install_bios_data_area(memory, *, hard_disks: int = 1) -> None:
    """Write the BDA fields guests read (COM1 base, EBDA segment, equipment word, base memory
    size, video mode 3 80x25 on a colour CRTC, hard-disk count) and the EBDA's size byte."""
    bda = bytearray(BDA_END - BDA_BASE)
    struct.pack_into("<4H", bda, BDA_COM_PORTS, COM1_BASE, 0, 0, 0)
    struct.pack_into("<H", bda, BDA_EBDA_SEGMENT, EBDA_BASE >> 4)
    struct.pack_into("<H", bda, BDA_EQUIPMENT, EQUIPMENT)
    struct.pack_into("<H", bda, BDA_MEMORY_KIB, BASE_MEMORY_KIB)
    bda[BDA_VIDEO_MODE] = 0x03
    struct.pack_into("<H", bda, BDA_VIDEO_COLUMNS, 80)
    struct.pack_into("<H", bda, BDA_VIDEO_PAGE_SIZE, 80 * 25 * 2)
    struct.pack_into("<H", bda, BDA_CRTC_BASE, 0x3D4)
    bda[BDA_HARD_DISKS] = hard_disks
    bda[BDA_VIDEO_ROWS] = 25 - 1
    memory.write(BDA_BASE, bytes(bda))
    ebda = bytearray(EBDA_KIB * 1024)
    ebda[0] = EBDA_KIB                  # first byte of the EBDA: its size in KiB
    memory.write(EBDA_BASE, bytes(ebda))


# ----- Intel MultiProcessor Specification 1.4 ------------------------------------------------------
MP_FLOATING_SIGNATURE = b"_MP_"
MP_CONFIG_SIGNATURE = b"PCMP"
MP_SPEC_REV = 4                 # version 1.4
MP_OEM_ID = b"TRAPVSR "         # 8 bytes, space padded
MP_PRODUCT_ID = b"TRAPVISOR PC"  # 12 bytes
LAPIC_ADDRESS = 0xFEE00000
IOAPIC_ADDRESS = 0xFEC00000
IOAPIC_VERSION = 0x11
LAPIC_VERSION = 0x14            # what QEMU's local APIC reports in its version register
CPU_SIGNATURE = 0x00000600      # family 6 (SeaBIOS's default when CPUID gives none)
CPU_FEATURES = 0x00000201       # FPU | APIC (CPUID.1:EDX)

# Entry types (section 4.3) and their lengths.
MP_PROCESSOR, MP_BUS, MP_IOAPIC, MP_IO_INTERRUPT, MP_LOCAL_INTERRUPT = range(5)
MP_ENTRY_LENGTH = {MP_PROCESSOR: 20, MP_BUS: 8, MP_IOAPIC: 8, MP_IO_INTERRUPT: 8,
                   MP_LOCAL_INTERRUPT: 8}
CPU_ENABLED, CPU_BSP = 0x01, 0x02
IOAPIC_ENABLED = 0x01
INT_TYPE_INT, INT_TYPE_NMI, INT_TYPE_SMI, INT_TYPE_EXTINT = range(4)
INT_FLAGS_CONFORMS = 0x0000     # polarity and trigger mode conform to the bus (ISA: high, edge)
ALL_LOCAL_APICS = 0xFF
ISA_BUS_ID = 0
CONFIG_HEADER_LENGTH = 44
FLOATING_LENGTH = 16


def isa_irq_to_ioapic_pin(irq: int) -> int | None:
    """The IOAPIC input an ISA IRQ is wired to on a PC: IRQ 0 (the PIT) to INTIN2, the others
    identity; IRQ 2 (the 8259 cascade) has no IOAPIC input of its own (None)."""
    if irq == 0:
        return 2
    if irq == 2:
        return None
    return irq


def _checksum_byte(data: bytes) -> int:
    return (-sum(data)) & 0xFF


@dataclass(frozen=True)
class MpConfig:
    """What the MP configuration table describes. ``lapic_id`` must equal the local APIC's ID
    register (bits 31:24) and ``ioapic_id`` the IOAPIC's ID register: xv6 checks both."""
    lapic_id: int = 0
    ioapic_id: int = 0
    lapic_version: int = LAPIC_VERSION
    ioapic_version: int = IOAPIC_VERSION
    lapic_address: int = LAPIC_ADDRESS
    ioapic_address: int = IOAPIC_ADDRESS
    cpu_signature: int = CPU_SIGNATURE
    cpu_features: int = CPU_FEATURES


def build_mp_config_table(config: MpConfig = MpConfig()) -> bytes:
    """The MP configuration table (header + base entries, no extended entries), checksummed.
    Entries in the order the spec requires (by type): processor, bus, IOAPIC, I/O interrupt
    assignments for the ISA IRQs, local interrupt assignments (ExtINT on LINT0 of the BSP, NMI
    on LINT1 of every local APIC)."""
    entries = [struct.pack("<BBBBII8x", MP_PROCESSOR, config.lapic_id, config.lapic_version,
                           CPU_ENABLED | CPU_BSP, config.cpu_signature, config.cpu_features)]
    entries.append(struct.pack("<BB6s", MP_BUS, ISA_BUS_ID, b"ISA   "))
    entries.append(struct.pack("<BBBBI", MP_IOAPIC, config.ioapic_id, config.ioapic_version,
                               IOAPIC_ENABLED, config.ioapic_address))
    for irq in range(16):
        pin = isa_irq_to_ioapic_pin(irq)
        if pin is not None:
            entries.append(struct.pack("<BBHBBBB", MP_IO_INTERRUPT, INT_TYPE_INT,
                                       INT_FLAGS_CONFORMS, ISA_BUS_ID, irq, config.ioapic_id, pin))
    entries.append(struct.pack("<BBHBBBB", MP_LOCAL_INTERRUPT, INT_TYPE_EXTINT, INT_FLAGS_CONFORMS,
                               ISA_BUS_ID, 0, config.lapic_id, 0))
    entries.append(struct.pack("<BBHBBBB", MP_LOCAL_INTERRUPT, INT_TYPE_NMI, INT_FLAGS_CONFORMS,
                               ISA_BUS_ID, 0, ALL_LOCAL_APICS, 1))
    body = b"".join(entries)
    length = CONFIG_HEADER_LENGTH + len(body)
    header = struct.pack("<4sHBB8s12sIHHIHBB", MP_CONFIG_SIGNATURE, length, MP_SPEC_REV, 0,
                         MP_OEM_ID, MP_PRODUCT_ID, 0, 0, len(entries), config.lapic_address,
                         0, 0, 0)
    table = bytearray(header + body)
    table[7] = _checksum_byte(table)
    return bytes(table)


def build_mp_floating_pointer(config_table_address: int) -> bytes:
    """The 16-byte floating pointer: signature, configuration table address, length 1 (in
    16-byte units), spec revision 4, checksum, feature bytes 0 (a configuration table is
    present, no default configuration; IMCR absent: virtual wire mode)."""
    fp = bytearray(struct.pack("<4sIBBBB4x", MP_FLOATING_SIGNATURE, config_table_address,
                               FLOATING_LENGTH // 16, MP_SPEC_REV, 0, 0))
    fp[10] = _checksum_byte(fp)
    return bytes(fp)


def install_mp_tables(memory, config: MpConfig = MpConfig()) -> tuple[int, int]:
    """Write the floating pointer and the configuration table in the F-segment; return their
    addresses (floating pointer, configuration table)."""
    table = build_mp_config_table(config)
    check_in_ram(memory, MP_CONFIG_ADDR, len(table), "the MP configuration table")
    memory.write(MP_CONFIG_ADDR, table)
    memory.write(MP_FLOATING_ADDR, build_mp_floating_pointer(MP_CONFIG_ADDR))
    return MP_FLOATING_ADDR, MP_CONFIG_ADDR


def install_firmware_tables(memory, *, mp: MpConfig = MpConfig(), hard_disks: int = 1) -> None:
    """Everything a PC BIOS leaves in memory on this platform: BDA, EBDA, MP tables."""
    if memory.size < HIGH_MEMORY:
        raise BootError(f"a PC needs at least 1 MiB of RAM, not {memory.size:#x} bytes")
    install_bios_data_area(memory, hard_disks=hard_disks)
    install_mp_tables(memory, mp)


# ----- booting from a disk -----------------------------------------------------------------------
class DiskImageError(BootError):
    """The first drive cannot be booted: too short, or no boot signature."""


def read_boot_sector(disk: bytes | str | Path, name: str | None = None) -> bytes:
    """Sector 0 of a raw disk image (bytes, or a path: only the first 512 bytes are read),
    checked for the 0x55 0xAA signature at offsets 510-511."""
    if isinstance(disk, (str, Path)):
        name = name or str(disk)
        try:
            with open(disk, "rb") as f:
                sector = f.read(SECTOR_SIZE)
        except OSError as exc:
            raise DiskImageError(f"{name}: {exc.strerror}") from None
    else:
        name = name or "disk image"
        sector = bytes(disk[:SECTOR_SIZE])
    if len(sector) < SECTOR_SIZE:
        raise DiskImageError(f"{name}: {len(sector)} bytes, shorter than one 512-byte sector")
    if sector[510:512] != BOOT_SIGNATURE:
        raise DiskImageError(f"{name}: no boot signature (bytes 510-511 are "
                             f"{sector[510]:02X} {sector[511]:02X}, not 55 AA)")
    return sector


def boot_disk(memory, disk: bytes | str | Path, *, name: str | None = None,
              drive: int = BOOT_DRIVE, mp: MpConfig = MpConfig()) -> HandOver:
    """Boot the first drive like a PC BIOS: install the BDA, EBDA and MP tables, load sector 0
    at 0x7C00 after checking its signature, and return the hand-over: real mode,
    CS:IP = 0000:7C00, DL = ``drive``, SS:SP = 0000:7C00. Only sector 0 is read; the guest reads
    the rest through the disk controller. Raises ``DiskImageError``."""
    label = name or (str(disk) if isinstance(disk, (str, Path)) else "disk image")
    sector = read_boot_sector(disk, label)
    install_firmware_tables(memory, mp=mp)
    memory.write(BOOT_ADDRESS, sector)
    return real_mode_handover(BOOT_ADDRESS, edx=drive, esp=BOOT_ADDRESS,
                              notes=[f"{label}: boot sector loaded at {BOOT_ADDRESS:#x}"])
