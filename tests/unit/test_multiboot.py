"""Multiboot v1 loading (vmm/pc/multiboot.py) of real ELF kernels built here with
``gcc -m32 -ffreestanding -nostdlib`` and a linker script (skipped if the compiler cannot build
32-bit code). Boot information is read back at the offsets of the Multiboot 0.6.96
specification, section 3.3; the layout is compared with what QEMU 7.2's -kernel produced for
the same kind of kernel (measured: kernel 0x100000-0x1011a0, 2 modules -> mods_addr 0x102000,
strings from 0x102020, modules at 0x103000 and 0x104000, MBI 0x9500, mmap 0x9000)."""
from __future__ import annotations

import atexit
import functools
import io
import shutil
import struct
import subprocess
import tempfile
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile
from hypothesis import HealthCheck, given, settings, strategies as st

from emu.segments import Descriptor
from vmm.pc import elf, multiboot
from vmm.pc.elf import NotElfError, TruncatedImageError, UnsupportedElfError
from vmm.pc.handover import BootError
from vmm.pc.multiboot import (BadChecksumError, LayoutError, Module, MultibootError,
                                    NoMultibootHeaderError, UnsupportedHeaderError, boot_multiboot)

MiB = 1 << 20
RAM = 16 * MiB


class FakeMemory:
    """Guest RAM as a bytearray, pre-filled so that unwritten and zeroed bytes differ."""

    def __init__(self, size: int = RAM, fill: int = 0xCC):
        self.size = size
        self.ram = bytearray([fill]) * size

    def write(self, addr: int, data: bytes) -> None:
        assert 0 <= addr and addr + len(data) <= self.size, f"write outside RAM at {addr:#x}"
        self.ram[addr:addr + len(data)] = data

    def read(self, addr: int, length: int) -> bytes:
        return bytes(self.ram[addr:addr + length])

    def u32(self, addr: int) -> int:
        return struct.unpack_from("<I", self.ram, addr)[0]

    def cstring(self, addr: int) -> str:
        end = self.ram.index(0, addr)
        return self.ram[addr:end].decode()


# ----- building kernels ---------------------------------------------------------------------------
HEADER_C = """
typedef unsigned int u32;
__attribute__((section(".multiboot"), aligned(4), used))
const u32 multiboot_header[3] = {0x1BADB002u, FLAGS, CHECKSUM};
"""

KERNEL_C = HEADER_C + """
typedef unsigned char u8;
u32 results[16] = {0xdeadbeef};          /* .data: the checks' outcome, found through .symtab */
u8 big_bss[0x30000];                     /* must be zero on entry */
u8 stack[4096];
const char greeting[] = "multiboot kernel";

void kmain(u32 magic, u32 *mbi) {
    u32 nonzero = 0;
    for (u32 i = 0; i < sizeof big_bss; i++) nonzero += big_bss[i] != 0;
    results[0] = magic;
    results[1] = (u32)mbi;
    results[2] = nonzero;
    results[3] = mbi[0];                 /* flags */
    results[4] = mbi[2];                 /* mem_upper */
    const char *c = (const char *)mbi[4];
    u32 n = 0;
    while (c[n]) n++;
    results[5] = n;                      /* strlen(cmdline) */
    results[6] = mbi[5];                 /* mods_count */
    u32 eflags;
    __asm__ volatile("pushfl; popl %0" : "=r"(eflags));
    results[7] = eflags;
    results[8] = 0x600d;
    for (;;) __asm__ volatile("cli; hlt");
}
__asm__(".globl _start\\n_start:\\n mov $stack+4096, %esp\\n push %ebx\\n push %eax\\n"
        " call kmain\\n");
"""

LINK_LD = """
ENTRY(_start)
PHDRS { text PT_LOAD FILEHDR PHDRS; data PT_LOAD; }
SECTIONS {
  . = BASE + SIZEOF_HEADERS;
  .text : { *(.multiboot) *(.text*) } :text
  .rodata : { *(.rodata*) } :text
  . = ALIGN(0x1000);
  .data : { *(.data*) } :data
  .bss : { *(COMMON) *(.bss*) } :data
  /DISCARD/ : { *(.note*) *(.comment) *(.eh_frame*) }
}
"""

CFLAGS = ["-ffreestanding", "-nostdlib", "-fno-pic", "-fno-pie", "-no-pie", "-static", "-O1",
          "-fno-stack-protector", "-fno-asynchronous-unwind-tables", "-Wl,--build-id=none"]
BUILD_DIR = Path(tempfile.mkdtemp(prefix="trapvisor-mb-"))
atexit.register(shutil.rmtree, BUILD_DIR, True)


@functools.cache
def gcc_works(bits: int) -> bool:
    if not shutil.which("gcc"):
        return False
    src = BUILD_DIR / f"probe{bits}.c"
    src.write_text("void _start(void) { for (;;); }\n")
    out = subprocess.run(["gcc", f"-m{bits}", *CFLAGS, "-o", str(src.with_suffix(".elf")),
                          str(src)], capture_output=True)
    return out.returncode == 0


needs_gcc32 = pytest.mark.skipif(not gcc_works(32), reason="gcc -m32 cannot build here")


def header_macros(flags: int = 0x3, checksum: int | None = None) -> list[str]:
    if checksum is None:
        checksum = -(0x1BADB002 + flags) & 0xFFFFFFFF
    return [f"-DFLAGS={flags:#x}u", f"-DCHECKSUM={checksum:#x}u"]


# A higher-half kernel: linked at 0xC0100000, loaded at 1 MiB (AT), e_entry virtual.
HIGHER_HALF_LD = """
ENTRY(_start)
SECTIONS {
  . = 0xC0100000;
  .text : AT(0x100000) { *(.multiboot) *(.text*) *(.rodata*) *(.data*) *(COMMON) *(.bss*) }
  /DISCARD/ : { *(.note*) *(.comment) *(.eh_frame*) }
}
"""


@functools.cache
def build(source: str = KERNEL_C, base: int = 0x100000, bits: int = 32,
          flags: int = 0x3, checksum: int | None = None, strip: bool = False,
          script: str = LINK_LD) -> bytes:
    """Compile and link ``source`` at ``base``; the ELF file's bytes (cached per arguments)."""
    key = abs(hash((source, base, bits, flags, checksum, strip, script)))
    src, ld, out = (BUILD_DIR / f"k{key}.c", BUILD_DIR / f"k{key}.ld", BUILD_DIR / f"k{key}.elf")
    src.write_text(source)
    ld.write_text(script.replace("BASE", hex(base)))
    cmd = ["gcc", f"-m{bits}", *CFLAGS, *header_macros(flags, checksum), "-T", str(ld),
           "-o", str(out), str(src)]
    if strip:
        cmd.append("-s")
    subprocess.run(cmd, check=True, capture_output=True)
    return out.read_bytes()


def kernel_path(data: bytes, name: str = "kernel.elf") -> Path:
    path = BUILD_DIR / name
    path.write_bytes(data)
    return path


def load_headers(data: bytes) -> list[dict]:
    """The PT_LOAD program headers, read independently with pyelftools."""
    return [dict(seg.header) for seg in ELFFile(io.BytesIO(data)).iter_segments()
            if seg["p_type"] == "PT_LOAD"]


def patch_phdr(data: bytes, index: int, field: str, value: int) -> bytes:
    """Overwrite one field of program header ``index`` (ELF32 layout)."""
    offsets = {"p_type": 0, "p_offset": 4, "p_vaddr": 8, "p_paddr": 12, "p_filesz": 16,
               "p_memsz": 20}
    phoff, phentsize = struct.unpack_from("<I", data, 28)[0], struct.unpack_from("<H", data, 42)[0]
    out = bytearray(data)
    struct.pack_into("<I", out, phoff + index * phentsize + offsets[field], value)
    return bytes(out)


def mbi_fields(mem: FakeMemory, addr: int) -> dict:
    names = ["flags", "mem_lower", "mem_upper", "boot_device", "cmdline", "mods_count",
             "mods_addr", "syms0", "syms1", "syms2", "syms3", "mmap_length", "mmap_addr",
             "drives_length", "drives_addr", "config_table", "boot_loader_name", "apm_table"]
    return dict(zip(names, struct.unpack_from("<18I", mem.ram, addr)))


def mmap_entries(mem: FakeMemory, addr: int, length: int) -> list[tuple[int, int, int, int]]:
    """(size, base_addr, length, type) entries, walked as the spec says: next = this + size + 4."""
    entries, p = [], addr
    while p < addr + length:
        size, base, size_bytes, kind = struct.unpack_from("<IQQI", mem.ram, p)
        entries.append((size, base, size_bytes, kind))
        p += size + 4
    assert p == addr + length
    return entries


def page_align(x: int) -> int:
    return (x + 0xFFF) & ~0xFFF


# ----- loading an ELF ------------------------------------------------------------------------------
@needs_gcc32
def test_segments_load_at_their_physical_addresses_and_bss_is_zeroed():
    data = build()
    mem = FakeMemory()
    boot = boot_multiboot(mem, data)
    phdrs = load_headers(data)
    assert len(phdrs) == 2
    for ph in phdrs:
        start, filesz, memsz = ph["p_paddr"], ph["p_filesz"], ph["p_memsz"]
        assert mem.read(start, filesz) == data[ph["p_offset"]:ph["p_offset"] + filesz]
        assert mem.read(start + filesz, memsz - filesz) == bytes(memsz - filesz)
    assert mem.ram[phdrs[1]["p_paddr"] + phdrs[1]["p_memsz"]] == 0xCC   # nothing beyond memsz
    bss = phdrs[1]
    assert bss["p_memsz"] - bss["p_filesz"] >= 0x30000
    assert [(r.start, r.end) for r in boot.kernel] == [
        (ph["p_paddr"], ph["p_paddr"] + ph["p_memsz"]) for ph in phdrs]
    assert boot.entry == ELFFile(io.BytesIO(data))["e_entry"]


@needs_gcc32
def test_boot_information_follows_the_spec_offsets():
    data = build()
    mem = FakeMemory()
    mods = [Module(b"KEY=VALUE\n", "env.txt"), Module(bytes(range(256)) * 20, "blob.bin foo=bar")]
    boot = boot_multiboot(mem, data, name="/boot/kernel.elf", cmdline="arg1 arg2", modules=mods)
    assert boot.info_address == multiboot.MBI_ADDR == 0x9500
    f = mbi_fields(mem, boot.info_address)
    # memory (0), boot_device (1), cmdline (2), mods (3), mmap (6), boot loader name (9)
    assert f["flags"] == 0b10_0100_1111
    assert f["mem_lower"] == 639
    assert f["mem_upper"] == (RAM - MiB) // 1024
    assert f["boot_device"] == 0x8000FFFF
    assert mem.cstring(f["cmdline"]) == "/boot/kernel.elf arg1 arg2"
    assert mem.cstring(f["boot_loader_name"]) == "trapvisor"
    assert f["mods_count"] == 2
    assert f["mmap_addr"] == 0x9000 and f["mmap_length"] == 4 * 24
    assert f["syms0"] == f["syms1"] == f["drives_length"] == f["config_table"] == 0
    assert mem.read(boot.info_address + 72, 16) == bytes(16)   # no VBE information


@needs_gcc32
def test_module_list_strings_and_layout_match_qemu():
    data = build()
    mem = FakeMemory()
    mods = [Module(b"KEY=VALUE\n", "env.txt"), Module(b"\x01" * 5000, "blob.bin foo=bar")]
    boot = boot_multiboot(mem, data, name="dump.elf", cmdline="arg1 arg2", modules=mods)
    f = mbi_fields(mem, boot.info_address)
    kernel_end = max(r.end for r in boot.kernel)
    kernel_start = min(r.start for r in boot.kernel)
    # QEMU: module list right after the page-aligned kernel, then module strings, the kernel
    # command line, the boot loader name; modules on the following pages.
    assert f["mods_addr"] == kernel_start + page_align(kernel_end - kernel_start)
    entries = [struct.unpack_from("<IIII", mem.ram, f["mods_addr"] + 16 * i) for i in range(2)]
    s0 = f["mods_addr"] + 32
    assert entries[0][2] == s0 and mem.cstring(s0) == "env.txt"
    assert entries[1][2] == s0 + 8 and mem.cstring(s0 + 8) == "blob.bin foo=bar"
    assert f["cmdline"] == s0 + 8 + 17
    assert f["boot_loader_name"] == f["cmdline"] + len("dump.elf arg1 arg2") + 1
    first = page_align(f["boot_loader_name"] + len("trapvisor") + 1)
    assert entries[0][:2] == (first, first + 10)
    assert entries[1][:2] == (first + 0x1000, first + 0x1000 + 5000)
    for (start, end, _, reserved), module in zip(entries, mods):
        assert start % 0x1000 == 0 and reserved == 0
        assert mem.read(start, end - start) == module.data
    assert [(r.start, r.end) for r in boot.modules] == [e[:2] for e in entries]


@needs_gcc32
def test_empty_command_line_is_still_given_as_qemu_does():
    mem = FakeMemory()
    boot = boot_multiboot(mem, build(), name="k")
    f = mbi_fields(mem, boot.info_address)
    assert mem.cstring(f["cmdline"]) == "k " == boot.cmdline
    assert f["mods_count"] == 0 and f["flags"] & (1 << 3)


@needs_gcc32
def test_memory_map_has_the_pc_holes():
    mem = FakeMemory()
    boot = boot_multiboot(mem, build())
    f = mbi_fields(mem, boot.info_address)
    entries = mmap_entries(mem, f["mmap_addr"], f["mmap_length"])
    assert all(size == 20 for size, *_ in entries)
    assert [e[1:] for e in entries] == [
        (0, 0x9FC00, 1),                 # conventional memory up to the EBDA
        (0x9FC00, 0x400, 2),             # EBDA
        (0xF0000, 0x10000, 2),           # system BIOS
        (0x100000, RAM - MiB, 1),        # extended memory
    ]
    # mem_upper is the memory from 1 MiB to the first hole, as the entries say
    assert f["mem_upper"] * 1024 == entries[3][2]
    assert f["mem_lower"] * 1024 == entries[0][2]


@needs_gcc32
def test_handover_is_flat_protected_mode_with_the_magic_and_the_info_pointer():
    mem = FakeMemory()
    boot = boot_multiboot(mem, build())
    h = boot.handover
    assert h.mode == "protected"
    assert h.registers["eax"] == 0x2BADB002 and h.registers["ebx"] == boot.info_address
    assert h.eip == boot.entry
    assert h.cr0 & 1 and not h.cr0 & (1 << 31)                  # PE on, paging off
    assert not h.eflags & (1 << 9) and not h.eflags & (1 << 17)  # IF = 0, VM = 0
    assert h.a20
    gdt_base, gdt_limit = h.gdtr
    for name, seg in h.segments.items():
        assert seg.base == 0 and seg.limit == 0xFFFFFFFF
        assert seg.flags & (1 << 22)                             # 32-bit (D/B)
        assert (seg.flags >> 13) & 3 == 0                        # DPL 0
        is_code = bool(seg.flags & (1 << 11))
        assert is_code == (name == "cs")
        # the selector names a GDT entry that loads exactly this segment
        assert seg.selector + 7 <= gdt_limit
        raw = struct.unpack_from("<Q", mem.ram, gdt_base + seg.selector)[0]
        d = Descriptor.decode(raw)
        assert (d.base, d.limit, d.flags) == (seg.base, seg.limit, seg.flags)


@needs_gcc32
def test_kernel_runs_on_the_cpu_and_sees_what_the_spec_promises():
    """Apply the hand-over to a real emu.cpu.Cpu and let the kernel check its own entry state."""
    from emu.cpu import Cpu
    from emu.memory import GuestMemory

    class Quiet:
        def on_interrupt(self, n): cpu.stop()
        def on_in(self, port, size): return 0xFF
        def on_out(self, port, size, value): pass
        def on_cpuid(self): return False
        def on_invalid_opcode(self): cpu.stop(); return True
        def on_unmapped(self, *args): return False

    data = build()
    results = elf.symbols(data)["results"]
    mem = GuestMemory(RAM)
    try:
        mem.write(0, b"\xCC" * RAM)            # bss must be zeroed by the loader, not by luck
        boot = boot_multiboot(mem, data, cmdline="hello world",
                              modules=[Module(b"x" * 3, "m")])
        cpu = Cpu(mem)
        cpu.attach(Quiet())
        boot.handover.apply(cpu)
        assert cpu.protected and cpu.code_bits == 32
        cpu.run(2_000_000)
        assert cpu.halted
        words = struct.unpack_from("<9I", mem.read(results, 36))
    finally:
        mem.close()
    assert words[0] == 0x2BADB002 and words[1] == boot.info_address
    assert words[2] == 0                       # big_bss all zero
    assert words[3] == 0x24F and words[4] == (RAM - MiB) // 1024
    assert words[5] == len("kernel hello world") and words[6] == 1
    assert not words[7] & (1 << 9)             # IF clear
    assert words[8] == 0x600D


@needs_gcc32
def test_higher_half_kernel_loads_at_paddr_and_enters_at_the_translated_entry():
    data = build(source=HEADER_C + "void _start(void) { for (;;); }\n", script=HIGHER_HALF_LD)
    (ph,) = load_headers(data)
    assert ph["p_vaddr"] == 0xC0100000 and ph["p_paddr"] == 0x100000
    e_entry = ELFFile(io.BytesIO(data))["e_entry"]
    assert e_entry >= 0xC0100000
    mem = FakeMemory()
    boot = boot_multiboot(mem, data)
    assert boot.entry == e_entry - 0xC0000000          # as GRUB does
    assert mem.read(0x100000, ph["p_filesz"]) == data[ph["p_offset"]:][:ph["p_filesz"]]


@needs_gcc32
def test_bios_data_area_counts_no_disk_for_a_kernel():
    mem = FakeMemory()
    boot_multiboot(mem, build())
    assert mem.ram[0x475] == 0 and mem.u32(0x40E) & 0xFFFF == 0x9FC0


# ----- the a.out kludge (flag 16) ----------------------------------------------------------------
def kludge_image(load_addr=0x200000, header_offset=0x40, code=b"\xF4", bss=0x2000,
                 extra=b"payload", flags=0x10003, load_end=None, bss_end=None):
    """A flat (non-ELF) kernel whose header gives the load addresses."""
    body = bytearray(b"\x90" * header_offset)
    image_len = header_offset + 32 + len(code) + len(extra)
    load_end = load_addr + image_len if load_end is None else load_end
    bss_end = load_end + bss if bss_end is None else bss_end
    entry = load_addr + header_offset + 32
    checksum = -(0x1BADB002 + flags) & 0xFFFFFFFF
    body += struct.pack("<8I", 0x1BADB002, flags, checksum, load_addr + header_offset,
                        load_addr, load_end, bss_end, entry)
    body += code + extra
    return bytes(body), entry


def test_kludge_loads_by_the_header_address_fields():
    image, entry = kludge_image()
    mem = FakeMemory()
    boot = boot_multiboot(mem, image + b"trailing junk not loaded")
    assert mem.read(0x200000, len(image)) == image
    assert mem.read(0x200000 + len(image), 0x2000) == bytes(0x2000)
    assert mem.ram[0x200000 + len(image) + 0x2000] == 0xCC
    assert boot.entry == boot.handover.eip == entry
    assert boot.header.aout_kludge and boot.header.load_addr == 0x200000


def test_kludge_kernel_over_the_boot_information_moves_it():
    image, entry = kludge_image(load_addr=0x8000, bss=0x3000)   # covers 0x8000-0xB0xx
    mem = FakeMemory()
    boot = boot_multiboot(mem, image, cmdline="low")
    assert boot.info_address != multiboot.MBI_ADDR
    end = 0x8000 + len(image) + 0x3000
    assert boot.info_address >= end and boot.mmap_address >= end
    f = mbi_fields(mem, boot.info_address)
    assert mem.cstring(f["cmdline"]) == "kernel low"
    assert f["mmap_addr"] == boot.mmap_address
    assert mem.read(0x8000, len(image)) == image
    assert any("moved" in note for note in boot.handover.notes)


def test_kludge_with_truncated_file_is_refused():
    image, _ = kludge_image(load_end=0x200000 + 0x10000)
    with pytest.raises(TruncatedImageError, match="truncated"):
        boot_multiboot(FakeMemory(), image)


def test_kludge_with_bss_end_below_load_end_is_refused():
    image, _ = kludge_image(bss_end=0x200010)
    with pytest.raises(UnsupportedHeaderError, match="bss_end_addr"):
        boot_multiboot(FakeMemory(), image)


# ----- bad input ---------------------------------------------------------------------------------
def test_not_a_kernel_at_all():
    with pytest.raises(NoMultibootHeaderError, match="not a Multiboot kernel"):
        boot_multiboot(FakeMemory(), b"just some text\n" * 100)


def test_flat_file_with_a_plain_header_is_not_elf():
    image = struct.pack("<3I", 0x1BADB002, 0, -0x1BADB002 & 0xFFFFFFFF) + b"\xF4" * 64
    with pytest.raises(NotElfError, match="not an ELF file"):
        boot_multiboot(FakeMemory(), image)


@pytest.mark.skipif(not gcc_works(64), reason="gcc -m64 cannot build here")
def test_64_bit_elf_is_refused():
    data = build(source=HEADER_C + "void _start(void) { for (;;); }\n", bits=64)
    assert data[4] == 2   # ELFCLASS64
    with pytest.raises(UnsupportedElfError, match="64-bit"):
        boot_multiboot(FakeMemory(), data)


@needs_gcc32
def test_elf_for_another_machine_is_refused():
    data = bytearray(build())
    struct.pack_into("<H", data, 18, 40)    # e_machine = EM_ARM
    with pytest.raises(UnsupportedElfError, match="EM_ARM"):
        boot_multiboot(FakeMemory(), bytes(data))


@needs_gcc32
def test_elf_without_multiboot_header():
    data = build(source=KERNEL_C.replace("0x1BADB002u", "0x12345678u"))
    with pytest.raises(NoMultibootHeaderError, match="no header magic"):
        boot_multiboot(FakeMemory(), data)


@needs_gcc32
def test_bad_checksum():
    data = build(checksum=0x12345678)
    with pytest.raises(BadChecksumError, match="bad checksum"):
        boot_multiboot(FakeMemory(), data)


@needs_gcc32
def test_unknown_required_flag_is_refused():
    data = build(flags=0x3 | (1 << 5))
    with pytest.raises(UnsupportedHeaderError, match="0x20"):
        boot_multiboot(FakeMemory(), data)


@needs_gcc32
@pytest.mark.parametrize("cut", [30, 60, 0x1020])
def test_truncated_elf(cut):
    """Cut inside the ELF header, inside the program header table, inside a segment."""
    data = build()
    phdrs = load_headers(data)
    assert phdrs[1]["p_offset"] < 0x1020 < phdrs[1]["p_offset"] + phdrs[1]["p_filesz"]
    with pytest.raises(TruncatedImageError, match="truncated"):
        boot_multiboot(FakeMemory(), data[:cut])


@needs_gcc32
def test_segment_beyond_ram():
    data = build(base=0xFE0000)              # + a 0x30000 bss: past 16 MiB of RAM
    with pytest.raises(LayoutError, match="outside the 16 MiB of guest RAM"):
        boot_multiboot(FakeMemory(), data)


@needs_gcc32
def test_segment_over_the_bios_area():
    data = build(base=0xE0000)
    with pytest.raises(LayoutError, match="BIOS ROM area"):
        boot_multiboot(FakeMemory(), data)


@needs_gcc32
def test_overlapping_segments():
    data = build()
    first = load_headers(data)[0]
    with pytest.raises(LayoutError, match="overlap"):
        boot_multiboot(FakeMemory(), patch_phdr(data, 1, "p_paddr", first["p_paddr"] + 0x10))


@needs_gcc32
def test_filesz_larger_than_memsz_is_malformed():
    data = build()
    ph = load_headers(data)[1]
    with pytest.raises(elf.ElfError, match="p_filesz"):
        boot_multiboot(FakeMemory(), patch_phdr(data, 1, "p_memsz", ph["p_filesz"] - 1))


@needs_gcc32
def test_entry_outside_the_image():
    data = bytearray(build())
    struct.pack_into("<I", data, 24, 0x7000000)   # e_entry
    with pytest.raises(LayoutError, match="entry point"):
        boot_multiboot(FakeMemory(), bytes(data))


@needs_gcc32
def test_modules_that_do_not_fit():
    with pytest.raises(LayoutError, match="need RAM up to"):
        boot_multiboot(FakeMemory(4 * MiB), build(), modules=[Module(bytes(3 * MiB), "big")])


def test_missing_files_are_boot_errors():
    with pytest.raises(MultibootError, match="missing.elf"):
        boot_multiboot(FakeMemory(), BUILD_DIR / "missing.elf")
    with pytest.raises(MultibootError, match="missing.mod"):
        Module.from_spec(str(BUILD_DIR / "missing.mod") + " args")


@needs_gcc32
def test_every_error_is_a_one_line_boot_error():
    for data in (b"", b"\x7fELF", build()[:100], build(checksum=1)):
        with pytest.raises(BootError) as info:
            boot_multiboot(FakeMemory(), data)
        assert "\n" not in str(info.value)


@needs_gcc32
def test_module_from_spec_keeps_the_whole_string(tmp_path):
    path = tmp_path / "env"
    path.write_bytes(b"A=1\n")
    module = Module.from_spec(f"{path} role=env")
    assert module.data == b"A=1\n" and module.string == f"{path} role=env"
    mem = FakeMemory()
    boot = boot_multiboot(mem, kernel_path(build()), modules=[module])
    f = mbi_fields(mem, boot.info_address)
    start, end, string, _ = struct.unpack_from("<IIII", mem.ram, f["mods_addr"])
    assert mem.read(start, end - start) == b"A=1\n" and mem.cstring(string) == module.string
    assert mem.cstring(f["cmdline"]).startswith(str(BUILD_DIR / "kernel.elf") + " ")


# ----- generated cases ------------------------------------------------------------------------------
text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=300)


@needs_gcc32
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sizes=st.lists(st.integers(0, 600_000), max_size=6), strings=st.lists(text, min_size=6,
       max_size=6), cmdline=text, ram_mib=st.sampled_from([2, 3, 4, 8]))
def test_modules_and_strings_never_overlap_and_fit(sizes, strings, cmdline, ram_mib):
    data = build()
    mem = FakeMemory(ram_mib * MiB)
    modules = [Module(bytes([i + 1]) * size, strings[i]) for i, size in enumerate(sizes)]
    # QEMU's layout computed independently: page-aligned kernel end, module list and strings,
    # then each module on its own pages.
    kernel_end = max(ph["p_paddr"] + ph["p_memsz"] for ph in load_headers(data))
    info = 16 * len(modules) + sum(len(m.string) + 1 for m in modules)
    info += len(f"kernel {cmdline}") + 1 + len("trapvisor") + 1
    end = page_align(page_align(kernel_end) + info) + sum(page_align(n) for n in sizes)
    try:
        boot = boot_multiboot(mem, data, cmdline=cmdline, modules=modules)
    except LayoutError as exc:
        assert "need RAM up to" in str(exc) and end > mem.size
        return
    assert end <= mem.size
    f = mbi_fields(mem, boot.info_address)
    strings_end = f["boot_loader_name"] + len("trapvisor") + 1
    regions = sorted((r.start, r.end) for r in boot.kernel + boot.info + boot.modules)
    assert (f["mods_addr"], strings_end) in regions
    nonempty = [r for r in regions if r[1] > r[0]]
    for (_, a_end), (b_start, _) in zip(nonempty, nonempty[1:]):
        assert a_end <= b_start
    for start, stop in regions:
        assert 0 <= start <= stop <= mem.size
    assert mem.cstring(f["cmdline"]) == f"kernel {cmdline}"
    for i, module in enumerate(modules):
        start, end, string, _ = struct.unpack_from("<IIII", mem.ram, f["mods_addr"] + 16 * i)
        assert start % 0x1000 == 0 and end - start == len(module.data)
        assert start >= strings_end and end <= mem.size
        assert mem.read(start, end - start) == module.data
        assert mem.cstring(string) == module.string
        assert not any(s < end and start < e for s, e in ((r.start, r.end) for r in boot.kernel))


# ----- symbols -----------------------------------------------------------------------------------
@needs_gcc32
def test_symbols_agree_with_nm():
    data = build()
    table = elf.symbols(data)
    nm = subprocess.run(["nm", str(kernel_path(data, "nm.elf"))], capture_output=True, text=True,
                        check=True).stdout
    expected = {name: int(value, 16) for value, kind, name in
                (line.split() for line in nm.splitlines() if len(line.split()) == 3)}
    for name in ("_start", "kmain", "results", "big_bss", "greeting", "multiboot_header"):
        assert table[name] == expected[name]
    assert table == {k: v for k, v in expected.items() if k in table}
    assert elf.symbols(kernel_path(data, "sym.elf")) == table


@needs_gcc32
def test_symbols_of_a_stripped_kernel_are_empty():
    assert elf.symbols(build(strip=True)) == {}


def test_symbols_of_a_non_elf_file():
    with pytest.raises(NotElfError):
        elf.symbols(b"MZ\x90\x00")
    assert not elf.is_elf(b"MZ") and elf.is_elf(b"\x7fELF\x01")
