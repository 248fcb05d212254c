"""A Multiboot (version 0.6.96, "Multiboot v1") boot loader: finds and checks the Multiboot
header, loads the kernel by its ELF program headers or the header's a.out-kludge address fields,
places modules and builds the Multiboot information structure, and describes the machine state
of section 3.2 (32-bit flat protected mode, EAX = 0x2BADB002, EBX = the information structure).

The layout follows QEMU's -kernel/-append/-initrd (hw/i386/multiboot.c with its multiboot.bin
option ROM): memory map at 0x9000, information structure at 0x9500; after the kernel's
page-aligned end the module list, then the strings (module strings, the kernel command line
"NAME ARGS", the boot loader name); modules follow, each starting on a page boundary.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from vmm.pc import bios
from vmm.pc.elf import LoadSegment, NotElfError, TruncatedImageError, is_elf, load_segments
from vmm.pc.handover import (BootError, CR0_ET, CR0_PE, HandOver, Segment, write_zeros)

HEADER_MAGIC = 0x1BADB002
BOOTLOADER_MAGIC = 0x2BADB002
HEADER_SEARCH_LIMIT = 8192      # the header lies wholly within the file's first 8 KiB ...
HEADER_ALIGN = 4                # ... on a 32-bit boundary
HEADER_SIZE = 12                # magic, flags, checksum
KLUDGE_HEADER_SIZE = 32         # + header_addr, load_addr, load_end_addr, bss_end_addr, entry_addr

# Multiboot header flags (3.1.2). Bits 0-15 are requirements: a loader must refuse what it
# does not know. Bits 16-31 are optional features.
MULTIBOOT_PAGE_ALIGN = 1 << 0
MULTIBOOT_MEMORY_INFO = 1 << 1
MULTIBOOT_VIDEO_MODE = 1 << 2
MULTIBOOT_AOUT_KLUDGE = 1 << 16
KNOWN_REQUIREMENTS = MULTIBOOT_PAGE_ALIGN | MULTIBOOT_MEMORY_INFO | MULTIBOOT_VIDEO_MODE

# Multiboot information flags (3.3).
MULTIBOOT_INFO_MEMORY = 1 << 0
MULTIBOOT_INFO_BOOTDEV = 1 << 1
MULTIBOOT_INFO_CMDLINE = 1 << 2
MULTIBOOT_INFO_MODS = 1 << 3
MULTIBOOT_INFO_MEM_MAP = 1 << 6
MULTIBOOT_INFO_BOOT_LOADER_NAME = 1 << 9

# Offsets in the information structure (3.3).
MBI_FLAGS, MBI_MEM_LOWER, MBI_MEM_UPPER, MBI_BOOT_DEVICE, MBI_CMDLINE = 0, 4, 8, 12, 16
MBI_MODS_COUNT, MBI_MODS_ADDR, MBI_SYMS = 20, 24, 28
MBI_MMAP_LENGTH, MBI_MMAP_ADDR, MBI_DRIVES_LENGTH, MBI_DRIVES_ADDR = 44, 48, 52, 56
MBI_CONFIG_TABLE, MBI_BOOT_LOADER_NAME, MBI_APM_TABLE = 60, 64, 68
MBI_SIZE = 88                   # through the VBE fields
MODULE_ENTRY_SIZE = 16          # mod_start, mod_end, string, reserved
MMAP_ENTRY_SIZE = 24            # size (= 20, not counting itself), base_addr, length, type
MMAP_ENTRY_SIZE_FIELD = 20

MMAP_ADDR = 0x9000              # QEMU's MULTIBOOT_STRUCT_ADDR: the memory map ...
MBI_ADDR = 0x9500               # ... and the information structure 0x500 above it
LOW_INFO_END = 0xA000
PAGE = 0x1000
BOOT_LOADER_NAME = "trapvisor"
BOOT_DEVICE = 0x8000FFFF        # BIOS drive 0x80, no partition: what QEMU reports
STACK_TOP = bios.BOOT_ADDRESS   # ESP is undefined for the kernel; give it somewhere harmless

# The GDT the hand-over's segments come from (QEMU's multiboot.bin uses the same selectors).
CODE_SELECTOR = 0x08
DATA_SELECTOR = 0x10
FLAT_CODE = Segment.flat32(CODE_SELECTOR, code=True)
FLAT_DATA = Segment.flat32(DATA_SELECTOR, code=False)
GDT = bytes(8) + FLAT_CODE.descriptor() + FLAT_DATA.descriptor()


class MultibootError(BootError):
    """A Multiboot kernel that cannot be loaded."""


class NoMultibootHeaderError(MultibootError):
    """No Multiboot header magic in the first 8 KiB."""


class BadChecksumError(MultibootError):
    """The magic is there but magic + flags + checksum is not 0 mod 2^32."""


class UnsupportedHeaderError(MultibootError):
    """The header requires a feature this loader does not provide, or its fields are invalid."""


class LayoutError(MultibootError):
    """Segments overlap, leave RAM, cover the firmware's areas, or the whole does not fit."""


@dataclass(frozen=True)
class MultibootHeader:
    """The header's fields (3.1.1); the address fields are 0 unless read (flag 16)."""
    offset: int
    flags: int
    checksum: int
    header_addr: int = 0
    load_addr: int = 0
    load_end_addr: int = 0
    bss_end_addr: int = 0
    entry_addr: int = 0

    @property
    def aout_kludge(self) -> bool:
        return bool(self.flags & MULTIBOOT_AOUT_KLUDGE)


@dataclass(frozen=True)
class Module:
    """A boot module: its contents and its string (QEMU: the -initrd item, "FILE ARGS")."""
    data: bytes
    string: str

    @classmethod
    def from_spec(cls, spec: str) -> "Module":
        """A module from a --initrd argument: "FILE" or "FILE ARGS" (the whole text becomes the
        module's string, as QEMU does)."""
        path = spec.split(" ", 1)[0]
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise MultibootError(f"module {path}: {exc.strerror}") from None
        return cls(data, spec)


@dataclass(frozen=True)
class Region:
    start: int
    end: int
    what: str


@dataclass
class MultibootBoot:
    """What ``boot_multiboot`` did: the hand-over, where the information structure is, and every
    range it wrote (kernel segments, boot information, modules), for logs and tests."""
    handover: HandOver
    header: MultibootHeader
    entry: int
    info_address: int
    mmap_address: int
    cmdline: str
    kernel: list[Region] = field(default_factory=list)
    modules: list[Region] = field(default_factory=list)
    info: list[Region] = field(default_factory=list)


def _page_align(value: int) -> int:
    return (value + PAGE - 1) & ~(PAGE - 1)


def find_header(data: bytes, name: str = "kernel") -> MultibootHeader:
    """The first valid Multiboot header (magic, and magic + flags + checksum = 0 mod 2^32) at a
    4-byte aligned offset, wholly within the first 8 KiB. Raises ``BadChecksumError`` if only
    headers with bad checksums are found, ``NoMultibootHeaderError`` if there is no magic."""
    limit = min(len(data), HEADER_SEARCH_LIMIT) - HEADER_SIZE
    bad = None
    for offset in range(0, limit + 1, HEADER_ALIGN):
        magic, flags, checksum = struct.unpack_from("<III", data, offset)
        if magic != HEADER_MAGIC:
            continue
        if (magic + flags + checksum) & 0xFFFFFFFF:
            bad = bad if bad is not None else (offset, flags, checksum)
            continue
        if flags & MULTIBOOT_AOUT_KLUDGE:
            if offset + KLUDGE_HEADER_SIZE > len(data):
                raise TruncatedImageError(f"{name}: truncated: the Multiboot header at {offset:#x} "
                                          "has address fields (flag 16) past the end of the file")
            return MultibootHeader(offset, flags, checksum,
                                   *struct.unpack_from("<5I", data, offset + HEADER_SIZE))
        return MultibootHeader(offset, flags, checksum)
    if bad is not None:
        offset, flags, checksum = bad
        raise BadChecksumError(f"{name}: Multiboot header at {offset:#x} has a bad checksum: "
                               f"0x1BADB002 + flags {flags:#x} + checksum {checksum:#x} is not 0 "
                               "mod 2^32")
    raise NoMultibootHeaderError(f"{name}: not a Multiboot kernel (no header magic 0x1BADB002 "
                                 "in the first 8 KiB)")


def _kludge_pieces(data: bytes, header: MultibootHeader,
                   name: str) -> tuple[int, list[LoadSegment]]:
    h = header
    if h.header_addr < h.load_addr:
        raise UnsupportedHeaderError(f"{name}: Multiboot header_addr {h.header_addr:#x} is below "
                                     f"load_addr {h.load_addr:#x}")
    text_offset = h.offset - (h.header_addr - h.load_addr)
    if text_offset < 0:
        raise UnsupportedHeaderError(f"{name}: Multiboot load_addr {h.load_addr:#x} would start "
                                     "before the beginning of the file")
    if h.load_end_addr:
        if h.load_end_addr < h.load_addr:
            raise UnsupportedHeaderError(f"{name}: Multiboot load_end_addr {h.load_end_addr:#x} "
                                         f"is below load_addr {h.load_addr:#x}")
        load_size = h.load_end_addr - h.load_addr
        if text_offset + load_size > len(data):
            raise TruncatedImageError(f"{name}: truncated: load_addr..load_end_addr needs file "
                                      f"bytes {text_offset:#x}-{text_offset + load_size:#x}, "
                                      f"the file has {len(data):#x}")
    else:
        load_size = len(data) - text_offset
    memsz = load_size
    if h.bss_end_addr:
        if h.bss_end_addr < h.load_addr + load_size:
            raise UnsupportedHeaderError(f"{name}: Multiboot bss_end_addr {h.bss_end_addr:#x} is "
                                         f"below the end of the loaded image "
                                         f"{h.load_addr + load_size:#x}")
        memsz = h.bss_end_addr - h.load_addr
    if memsz == 0:
        raise UnsupportedHeaderError(f"{name}: the Multiboot address fields load nothing")
    piece = LoadSegment(h.load_addr, h.load_addr, data[text_offset:text_offset + load_size], memsz,
                        text_offset)
    return h.entry_addr, [piece]


def _elf_pieces(data: bytes, name: str) -> tuple[int, list[LoadSegment]]:
    entry, segments = load_segments(data, name)
    if not segments:
        raise LayoutError(f"{name}: the ELF file has no loadable (PT_LOAD) segment")
    # The entry point is a virtual address; GRUB translates it through the segment that holds
    # it. Kernels linked higher-half with a physical e_entry (xv6) are taken as they are.
    for p in segments:
        if p.vaddr != p.paddr and p.vaddr <= entry < p.vaddr + p.memsz:
            return entry - p.vaddr + p.paddr, segments
    return entry, segments


def _check_placement(regions: list[Region], ram_size: int, name: str) -> None:
    ordered = sorted(regions, key=lambda r: (r.start, r.end))
    for r in ordered:
        if r.end > 1 << 32:
            raise LayoutError(f"{name}: {r.what} ({r.start:#x}-{r.end:#x}) extends beyond 4 GiB")
        if r.end > ram_size:
            raise LayoutError(f"{name}: {r.what} ({r.start:#x}-{r.end:#x}) is outside the "
                              f"{ram_size >> 20} MiB of guest RAM")
        firmware = bios.firmware_region_at(r.start, r.end)
        if firmware:
            raise LayoutError(f"{name}: {r.what} ({r.start:#x}-{r.end:#x}) would overwrite "
                              f"{firmware}")
    nonempty = [r for r in ordered if r.end > r.start]
    for a, b in zip(nonempty, nonempty[1:]):
        if b.start < a.end:
            raise LayoutError(f"{name}: {a.what} ({a.start:#x}-{a.end:#x}) and {b.what} "
                              f"({b.start:#x}-{b.end:#x}) overlap")


class _Layout:
    """Addresses of the boot information after the kernel (QEMU's order), and of the modules."""

    def __init__(self, base: int, modules: Sequence[Module], strings: list[bytes], mmap_len: int,
                 with_mbi: bool):
        self.mods_addr = base
        cursor = base + MODULE_ENTRY_SIZE * len(modules)
        self.string_addr = []
        for blob in strings:
            self.string_addr.append(cursor)
            cursor += len(blob)
        self.mmap_addr = self.mbi_addr = 0
        if with_mbi:
            self.mmap_addr = (cursor + 7) & ~7
            self.mbi_addr = self.mmap_addr + mmap_len
            cursor = self.mbi_addr + MBI_SIZE
        self.info_area = Region(base, cursor, "the boot information after the kernel")
        self.module_regions = []
        cursor = _page_align(cursor)
        for index, module in enumerate(modules):
            self.module_regions.append(Region(cursor, cursor + len(module.data), f"module {index}"))
            cursor = _page_align(cursor + len(module.data))
        self.end = cursor

    @property
    def regions(self) -> list[Region]:
        return [self.info_area] + self.module_regions


def _mmap_bytes(ram_size: int) -> bytes:
    return b"".join(struct.pack("<IQQI", MMAP_ENTRY_SIZE_FIELD, base, length, kind)
                    for base, length, kind in bios.memory_map(ram_size))


def boot_multiboot(memory, kernel: bytes | str | Path, *, name: str | None = None,
                   cmdline: str = "", modules: Sequence[Module] = (),
                   mp: bios.MpConfig = bios.MpConfig(), hard_disks: int = 0) -> MultibootBoot:
    """Boot a Multiboot v1 kernel as QEMU's ``-kernel NAME -append CMDLINE -initrd ...`` does.

    ``memory`` needs ``size`` and ``write(addr, data)`` (an ``emu.memory.GuestMemory``).
    ``kernel`` is the file's bytes or its path; ``name`` (default: the path, or "kernel") starts
    the command line the kernel sees: "NAME CMDLINE". Writes the kernel, the modules, the
    Multiboot information and the PC firmware tables (``bios.install_firmware_tables``; the BDA
    counts ``hard_disks``), and returns a ``MultibootBoot`` whose ``handover`` the boot path applies to the vCPU.

    Raises a ``BootError`` subclass (one-line message) for anything it cannot boot: not ELF
    and no address fields (``NotElfError``), 64-bit or non-x86 ELF (``UnsupportedElfError``),
    no header (``NoMultibootHeaderError``), bad checksum (``BadChecksumError``), unknown
    required header flags (``UnsupportedHeaderError``), a short file (``TruncatedImageError``),
    overlapping segments, segments outside RAM or over the BIOS areas, or a kernel, modules and
    boot information that do not fit in RAM (``LayoutError``)."""
    if isinstance(kernel, (str, Path)):
        name = name or str(kernel)
        try:
            data = Path(kernel).read_bytes()
        except OSError as exc:
            raise MultibootError(f"{name}: {exc.strerror}") from None
    else:
        name = name or "kernel"
        data = bytes(kernel)
    notes: list[str] = []

    try:
        header = find_header(data, name)
    except (NoMultibootHeaderError, BadChecksumError):
        if is_elf(data):
            load_segments(data, name)    # a 64-bit, foreign or truncated ELF says so first
        raise
    required = header.flags & 0xFFFF
    if required & ~KNOWN_REQUIREMENTS:
        raise UnsupportedHeaderError(f"{name}: the Multiboot header requires features "
                                     f"{required & ~KNOWN_REQUIREMENTS:#x} (flags bits 3-15) this "
                                     "loader does not know")
    if header.flags & MULTIBOOT_VIDEO_MODE:
        notes.append("the kernel asks for a video mode (flag 2): none is set, as under QEMU")
    if header.aout_kludge:
        entry, pieces = _kludge_pieces(data, header, name)
        notes.append(f"loaded by the header's address fields at {pieces[0].paddr:#x}")
    else:
        if not is_elf(data):
            raise NotElfError(f"{name}: not an ELF file, and its Multiboot header has no address "
                              "fields (flag 16)")
        entry, pieces = _elf_pieces(data, name)

    kernel_regions = [Region(p.paddr, p.end, f"segment at {p.paddr:#x}") for p in pieces]
    _check_placement(kernel_regions, memory.size, name)
    if not any(p.paddr <= entry < p.end for p in pieces):
        raise LayoutError(f"{name}: entry point {entry:#x} is outside every loaded segment")

    # QEMU's layout: after the kernel's page-aligned end, the module list, the strings, then the
    # modules on page boundaries. The memory map and the information structure go at QEMU's
    # fixed low addresses unless something of the kernel's lies there; then they follow the
    # strings.
    low = min(p.paddr for p in pieces)
    high = max(p.end for p in pieces)
    full_cmdline = f"{name} {cmdline}"
    strings = [m.string.encode("utf-8") + b"\0" for m in modules]
    strings += [full_cmdline.encode("utf-8") + b"\0", BOOT_LOADER_NAME.encode() + b"\0"]
    mmap = _mmap_bytes(memory.size)
    low_info = Region(MMAP_ADDR, MBI_ADDR + MBI_SIZE, "the Multiboot information")
    for relocated in (False, True):
        layout = _Layout(low + _page_align(high - low), modules, strings, len(mmap), relocated)
        if relocated or not any(r.start < low_info.end and low_info.start < r.end
                                for r in kernel_regions + layout.regions):
            break
    if relocated:
        notes.append(f"the kernel's image covers {MMAP_ADDR:#x}: boot information moved to "
                     f"{layout.mmap_addr:#x}")
    info_regions = [layout.info_area] if relocated else [layout.info_area, low_info]
    mmap_addr = layout.mmap_addr if relocated else MMAP_ADDR
    mbi_addr = layout.mbi_addr if relocated else MBI_ADDR
    if layout.end > memory.size:
        raise LayoutError(f"{name}: the kernel ({low:#x}-{high:#x}), {len(modules)} module(s) "
                          f"and the boot information need RAM up to {layout.end:#x}; guest RAM is "
                          f"{memory.size >> 20} MiB")
    module_regions = layout.module_regions
    _check_placement(kernel_regions + info_regions + module_regions, memory.size, name)

    # Write everything.
    bios.install_firmware_tables(memory, mp=mp, hard_disks=hard_disks)
    memory.write(bios.FSEG_GDT, GDT)
    for p in pieces:
        if p.data:
            memory.write(p.paddr, p.data)
        write_zeros(memory, p.paddr + len(p.data), p.memsz - len(p.data))
    module_list = bytearray()
    string_addr = layout.string_addr
    for index, (module, region) in enumerate(zip(modules, module_regions)):
        memory.write(region.start, module.data)
        module_list += struct.pack("<IIII", region.start, region.end, string_addr[index], 0)
    if module_list:
        memory.write(layout.mods_addr, bytes(module_list))
    memory.write(string_addr[0], b"".join(strings))
    memory.write(mmap_addr, mmap)

    mbi = bytearray(MBI_SIZE)
    flags = (MULTIBOOT_INFO_MEMORY | MULTIBOOT_INFO_BOOTDEV | MULTIBOOT_INFO_CMDLINE
             | MULTIBOOT_INFO_MODS | MULTIBOOT_INFO_MEM_MAP | MULTIBOOT_INFO_BOOT_LOADER_NAME)
    struct.pack_into("<IIIIIII", mbi, 0, flags, bios.BASE_MEMORY_KIB,
                     (memory.size - bios.HIGH_MEMORY) // 1024, BOOT_DEVICE,
                     string_addr[len(modules)], len(modules), layout.mods_addr)
    struct.pack_into("<II", mbi, MBI_MMAP_LENGTH, len(mmap), mmap_addr)
    struct.pack_into("<I", mbi, MBI_BOOT_LOADER_NAME, string_addr[len(modules) + 1])
    memory.write(mbi_addr, bytes(mbi))

    segments = {"cs": FLAT_CODE, "ds": FLAT_DATA, "es": FLAT_DATA, "fs": FLAT_DATA,
                "gs": FLAT_DATA, "ss": FLAT_DATA}
    handover = HandOver("protected", entry,
                        {"eax": BOOTLOADER_MAGIC, "ebx": mbi_addr, "esp": STACK_TOP},
                        segments, CR0_PE | CR0_ET, gdtr=(bios.FSEG_GDT, len(GDT) - 1),
                        notes=notes)
    return MultibootBoot(handover, header, entry, mbi_addr, mmap_addr, full_cmdline,
                         kernel=kernel_regions, modules=module_regions, info=info_regions)
