"""hypervisors/elf_image.py: the ELF32 executable `trapvisor asm` writes, read back by
pyelftools (vmm/pc/elf.py), binutils' readelf and gdb."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from emu.asm import assemble
from hypervisors.elf_image import elf_executable
from hypervisors.images import GuestImage, ImageError, elf_symbols
from vmm.pc import elf

SOURCE = """
    bits 16
    org 0x7c00
    PORT    equ 0x3f8
    start:  cli
    .spin:  jmp .spin
    message: db 'hi', 0
    end:
    before  equ $$ - 0x100
"""


def image_of(source: str) -> GuestImage:
    assembled = assemble(source)
    return GuestImage("test", assembled.code, assembled.origin, assembled.listing,
                      assembled.labels)


@pytest.fixture
def written(tmp_path: Path) -> tuple[GuestImage, Path]:
    image = image_of(SOURCE)
    path = tmp_path / "test.elf"
    path.write_bytes(elf_executable(image))
    return image, path


def test_an_i386_executable_whose_one_load_segment_is_the_image_at_its_origin(written):
    image, path = written
    data = path.read_bytes()
    parsed = elf.open_elf32(data)          # ELFCLASS32, EM_386, little-endian, ET_EXEC
    assert parsed["e_entry"] == 0x7C00
    entry, segments = elf.load_segments(data)
    assert entry == 0x7C00 and len(segments) == 1
    segment = segments[0]
    assert (segment.paddr, segment.vaddr, segment.data, segment.memsz) == (
        0x7C00, 0x7C00, image.code, len(image.code))
    assert segment.offset % 0x1000 == 0x7C00 % 0x1000  # p_offset = p_vaddr mod p_align
    sections = [section.name for section in parsed.iter_sections()]
    assert sections == ["", ".text", ".symtab", ".strtab", ".shstrtab"]
    assert parsed.get_section_by_name(".text").data() == image.code


def test_the_symbol_table_holds_the_labels_and_no_constant(written):
    image, path = written
    assert image.symbols == {"start": 0x7C00, "start.spin": 0x7C01, "message": 0x7C03,
                             "end": 0x7C06, "before": 0x7B00}
    assert elf.symbols(path) == image.symbols
    assert elf_symbols(path) == image.symbols
    table = elf.open_elf32(path.read_bytes()).get_section_by_name(".symtab")
    kinds = {sym.name: (sym["st_info"]["bind"], sym["st_info"]["type"], sym["st_shndx"])
             for sym in table.iter_symbols() if sym.name}
    assert kinds["start.spin"] == ("STB_LOCAL", "STT_NOTYPE", 1)   # in .text
    assert kinds["end"][2] == 1                                     # the end of .text is in it
    assert kinds["before"][2] == "SHN_ABS"                          # outside the image


def test_an_image_without_symbols_has_an_empty_symbol_table(tmp_path: Path):
    path = tmp_path / "flat.elf"
    path.write_bytes(elf_executable(GuestImage("flat", b"\xfa\xf4", 0x7C00, [])))
    assert elf.symbols(path) == {}
    assert elf.load_segments(path.read_bytes())[1][0].data == b"\xfa\xf4"


def test_origins_below_the_headers_page_get_the_next_congruent_offset(tmp_path: Path):
    image = GuestImage("low", b"\x90", 0x1010, [], {"low": 0x1010})
    segment = elf.load_segments(elf_executable(image))[1][0]
    assert segment.offset == 0x1010 and segment.paddr == 0x1010


def test_elf_symbols_refuses_a_file_that_is_not_elf(tmp_path: Path):
    path = tmp_path / "not.elf"
    path.write_bytes(b"MZ\x90\x00")
    with pytest.raises(ImageError, match="not an ELF file"):
        elf_symbols(path)


@pytest.mark.skipif(shutil.which("readelf") is None, reason="binutils' readelf is missing")
def test_readelf_reads_the_headers_and_symbols(written):
    _, path = written
    done = subprocess.run(["readelf", "-W", "-h", "-l", "-s", str(path)], capture_output=True,
                          text=True, check=True)
    assert done.stderr == ""
    assert re.search(r"Type:\s+EXEC", done.stdout) and "Intel 80386" in done.stdout
    assert re.search(r"LOAD\s+0x000c00 0x00007c00 0x00007c00 0x00006 0x00006 RWE 0x1000",
                     done.stdout)
    symbols = re.findall(r"^\s*\d+: ([0-9a-f]{8})\s+0 NOTYPE\s+LOCAL\s+DEFAULT\s+(\w+) (\S+)$",
                         done.stdout, re.M)
    assert symbols == [("00007c00", "1", "start"), ("00007c01", "1", "start.spin"),
                       ("00007c03", "1", "message"), ("00007c06", "1", "end"),
                       ("00007b00", "ABS", "before")]


@pytest.mark.skipif(shutil.which("gdb") is None, reason="gdb is not installed")
def test_gdb_knows_the_labels(written):
    _, path = written
    done = subprocess.run(["gdb", "-nx", "-batch", "-ex", f"file {path}",
                           "-ex", "info address start.spin", "-ex", "x/2xb message",
                           "-ex", "x/1i 'start.spin'"],
                          capture_output=True, text=True, timeout=60)
    assert 'Symbol "start.spin" is at 0x7c01' in done.stdout, done.stdout + done.stderr
    assert re.search(r"0x7c03 <message>:\s+0x68\s+0x69", done.stdout)
    assert re.search(r"0x7c01 <start.spin>:\s+jmp\s+0x7c01 <start.spin>", done.stdout)
