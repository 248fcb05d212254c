"""ELF32 executables of assembled guests, written so that gdb knows their labels
(`gdb -ex 'file hello.elf' -ex 'target remote :1234' -ex 'break start.next'`).

The file follows the System V gABI and its Intel386 supplement: an ET_EXEC, EM_386,
little-endian ELF32 whose one PT_LOAD program header puts the image at its origin (p_vaddr =
p_paddr = origin, p_offset = p_vaddr modulo the page size), with e_entry the image's entry. Its
sections are .text (the image), .symtab with one symbol per label, .strtab (the label names) and
.shstrtab (the section names). The labels are STB_LOCAL, STT_NOTYPE symbols of .text, as NASM
writes labels that are not declared `global` (a label outside the image is SHN_ABS); st_size is
0: a label says where code or data starts, not how long it is.

Only writing lives here; vmm/pc/elf.py reads ELF files (with pyelftools, which cannot write).
"""
from __future__ import annotations

import struct
from typing import NamedTuple

from hypervisors.images import GuestImage

# e_ident (gABI "ELF Identification")
ELFMAG = b"\x7fELF"
ELFCLASS32, ELFDATA2LSB, EV_CURRENT, ELFOSABI_NONE = 1, 1, 1, 0
EI_NIDENT = 16
# e_type, e_machine
ET_EXEC, EM_386 = 2, 3
# p_type, p_flags
PT_LOAD = 1
PF_X, PF_W, PF_R = 1, 2, 4
PAGE_SIZE = 0x1000
# sh_type, sh_flags, special section indexes
SHT_NULL, SHT_PROGBITS, SHT_SYMTAB, SHT_STRTAB = 0, 1, 2, 3
SHF_WRITE, SHF_ALLOC, SHF_EXECINSTR = 1, 2, 4
SHN_UNDEF, SHN_ABS = 0, 0xFFF1
TEXT, SYMTAB, STRTAB, SHSTRTAB = 1, 2, 3, 4  # this file's section header indexes
# st_info = ELF32_ST_INFO(bind, type)
STB_LOCAL = 0
STT_NOTYPE = 0


class Elf32_Ehdr(NamedTuple):
    e_ident: bytes
    e_type: int
    e_machine: int
    e_version: int
    e_entry: int
    e_phoff: int
    e_shoff: int
    e_flags: int
    e_ehsize: int
    e_phentsize: int
    e_phnum: int
    e_shentsize: int
    e_shnum: int
    e_shstrndx: int


class Elf32_Phdr(NamedTuple):
    p_type: int
    p_offset: int
    p_vaddr: int
    p_paddr: int
    p_filesz: int
    p_memsz: int
    p_flags: int
    p_align: int


class Elf32_Shdr(NamedTuple):
    sh_name: int
    sh_type: int
    sh_flags: int
    sh_addr: int
    sh_offset: int
    sh_size: int
    sh_link: int
    sh_info: int
    sh_addralign: int
    sh_entsize: int


class Elf32_Sym(NamedTuple):
    st_name: int
    st_value: int
    st_size: int
    st_info: int
    st_other: int
    st_shndx: int


EHDR = struct.Struct("<16sHHIIIIIHHHHHH")
PHDR = struct.Struct("<8I")
SHDR = struct.Struct("<10I")
SYM = struct.Struct("<IIIBBH")


def st_info(bind: int, kind: int) -> int:
    """ELF32_ST_INFO(b, t)."""
    return (bind << 4) | (kind & 0xF)


class StringTable:
    """A string table section: a NUL byte, then NUL-terminated names; a name's index is its
    offset."""

    def __init__(self) -> None:
        self.data = bytearray(b"\0")

    def add(self, name: str) -> int:
        index = len(self.data)
        self.data += name.encode() + b"\0"
        return index


def align(offset: int, boundary: int) -> int:
    return -(-offset // boundary) * boundary


def elf_executable(image: GuestImage) -> bytes:
    """The image as an ELF32 i386 executable with its symbols (see the module docstring)."""
    origin, code = image.origin, image.code
    code_offset = origin % PAGE_SIZE  # the gABI's p_offset = p_vaddr (mod p_align)
    if code_offset < EHDR.size + PHDR.size:
        code_offset += PAGE_SIZE
    strtab, shstrtab = StringTable(), StringTable()
    symbols = [Elf32_Sym(0, 0, 0, 0, 0, SHN_UNDEF)]
    for name, address in image.symbols.items():
        inside = origin <= address <= origin + len(code)
        symbols.append(Elf32_Sym(strtab.add(name), address & 0xFFFFFFFF, 0,
                                 st_info(STB_LOCAL, STT_NOTYPE), 0,
                                 TEXT if inside else SHN_ABS))
    symtab = b"".join(SYM.pack(*sym) for sym in symbols)
    symtab_offset = align(code_offset + len(code), 4)
    strtab_offset = symtab_offset + len(symtab)
    shstrtab_offset = strtab_offset + len(strtab.data)
    name = [0] + [shstrtab.add(section) for section in (".text", ".symtab", ".strtab",
                                                        ".shstrtab")]
    sections = [
        Elf32_Shdr(0, SHT_NULL, 0, 0, 0, 0, SHN_UNDEF, 0, 0, 0),
        Elf32_Shdr(name[TEXT], SHT_PROGBITS, SHF_ALLOC | SHF_WRITE | SHF_EXECINSTR, origin,
                   code_offset, len(code), SHN_UNDEF, 0, 16, 0),
        # sh_link: the string table; sh_info: one past the last STB_LOCAL symbol (all are local)
        Elf32_Shdr(name[SYMTAB], SHT_SYMTAB, 0, 0, symtab_offset, len(symtab), STRTAB,
                   len(symbols), 4, SYM.size),
        Elf32_Shdr(name[STRTAB], SHT_STRTAB, 0, 0, strtab_offset, len(strtab.data), SHN_UNDEF,
                   0, 1, 0),
        Elf32_Shdr(name[SHSTRTAB], SHT_STRTAB, 0, 0, shstrtab_offset, len(shstrtab.data),
                   SHN_UNDEF, 0, 1, 0),
    ]
    shoff = align(shstrtab_offset + len(shstrtab.data), 4)
    e_ident = ELFMAG + bytes([ELFCLASS32, ELFDATA2LSB, EV_CURRENT, ELFOSABI_NONE])
    header = Elf32_Ehdr(e_ident.ljust(EI_NIDENT, b"\0"), ET_EXEC, EM_386, EV_CURRENT,
                        image.entry, EHDR.size, shoff, 0, EHDR.size, PHDR.size, 1, SHDR.size,
                        len(sections), SHSTRTAB)
    segment = Elf32_Phdr(PT_LOAD, code_offset, origin, origin, len(code), len(code),
                         PF_R | PF_W | PF_X, PAGE_SIZE)
    out = bytearray(EHDR.pack(*header) + PHDR.pack(*segment))
    for offset, data in ((code_offset, code), (symtab_offset, symtab),
                         (strtab_offset, strtab.data), (shstrtab_offset, shstrtab.data),
                         (shoff, b"".join(SHDR.pack(*section) for section in sections))):
        out += bytes(offset - len(out)) + data
    return bytes(out)


__all__ = ["elf_executable"]
