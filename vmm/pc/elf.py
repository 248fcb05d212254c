"""ELF32 executables for the IA-32 (System V ABI, Intel386 supplement), read with pyelftools:
recognising an ELF file, its loadable segments (PT_LOAD program headers) and its symbol table
(.symtab) for the debugger.
"""
from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from pathlib import Path

from elftools.common.exceptions import ELFError
from elftools.construct.core import ConstructError
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection

from vmm.pc.handover import BootError

# What pyelftools raises on malformed or short input.
_PyElfError = (ELFError, ConstructError, struct.error)

ELF_MAGIC = b"\x7fELF"
EM_386 = "EM_386"


class ElfError(BootError):
    """An ELF file that is malformed or not a 32-bit x86 executable."""


class NotElfError(ElfError):
    """The file does not start with the ELF magic."""


class UnsupportedElfError(ElfError):
    """An ELF of another class or machine (64-bit, ARM, ...)."""


class TruncatedImageError(BootError):
    """The file ends before a header or segment it declares."""


@dataclass(frozen=True)
class LoadSegment:
    """One PT_LOAD program header: ``data`` (p_filesz bytes) goes at ``paddr``, zeros follow up
    to ``memsz`` (the bss)."""
    paddr: int
    vaddr: int
    data: bytes
    memsz: int
    offset: int

    @property
    def end(self) -> int:
        return self.paddr + self.memsz


def is_elf(data: bytes) -> bool:
    return data[:4] == ELF_MAGIC


def _open(data: bytes, name: str) -> ELFFile:
    if not is_elf(data):
        raise NotElfError(f"{name}: not an ELF file")
    if len(data) < 52:
        raise TruncatedImageError(f"{name}: truncated ELF file ({len(data)} bytes, "
                                  "shorter than its 52-byte header)")
    try:
        return ELFFile(io.BytesIO(data))
    except _PyElfError as exc:
        raise ElfError(f"{name}: malformed ELF file: {exc}") from None


def open_elf32(data: bytes, name: str = "image") -> ELFFile:
    """An ``ELFFile`` for a 32-bit little-endian IA-32 executable, or an ``ElfError`` saying why
    not (64-bit, another machine, big-endian, not ET_EXEC)."""
    elf = _open(data, name)
    if elf.elfclass != 32:
        raise UnsupportedElfError(f"{name}: {elf.elfclass}-bit ELF (machine {elf['e_machine']}); "
                                  "give a 32-bit x86 (EM_386) kernel")
    if elf["e_machine"] != EM_386:
        raise UnsupportedElfError(f"{name}: ELF for machine {elf['e_machine']}, not EM_386 (x86)")
    if not elf.little_endian:
        raise UnsupportedElfError(f"{name}: big-endian ELF")
    if elf["e_type"] != "ET_EXEC":
        raise UnsupportedElfError(f"{name}: ELF type {elf['e_type']}, not an executable (ET_EXEC)")
    return elf


def load_segments(data: bytes, name: str = "image") -> tuple[int, list[LoadSegment]]:
    """(e_entry, the PT_LOAD segments with p_memsz > 0), checked against the file's length.
    Overlaps and placement are the loader's business."""
    elf = open_elf32(data, name)
    header = elf.header
    table_end = header["e_phoff"] + header["e_phnum"] * header["e_phentsize"]
    if header["e_phnum"] and table_end > len(data):
        raise TruncatedImageError(f"{name}: truncated: the program header table ends at "
                                  f"{table_end:#x}, past the end of the file ({len(data):#x})")
    segments = []
    try:
        for index, phdr in enumerate(elf.iter_segments()):
            if phdr["p_type"] != "PT_LOAD" or phdr["p_memsz"] == 0:
                continue
            start, filesz = phdr["p_offset"], phdr["p_filesz"]
            if filesz > phdr["p_memsz"]:
                raise ElfError(f"{name}: malformed program header {index}: p_filesz {filesz:#x} > "
                               f"p_memsz {phdr['p_memsz']:#x}")
            if start + filesz > len(data):
                raise TruncatedImageError(
                    f"{name}: truncated: segment {index} needs file bytes {start:#x}-"
                    f"{start + filesz:#x}, the file has {len(data):#x}")
            segments.append(LoadSegment(phdr["p_paddr"], phdr["p_vaddr"],
                                        data[start:start + filesz], phdr["p_memsz"], start))
    except _PyElfError as exc:
        raise ElfError(f"{name}: malformed program headers: {exc}") from None
    return header["e_entry"], segments


def symbols(source: bytes | str | Path, name: str | None = None) -> dict[str, int]:
    """The ELF's symbol table (.symtab, or any SHT_SYMTAB section): name -> st_value.

    Section and file symbols and unnamed ones are left out; for a name defined more than once
    (static functions in several files) the first definition wins. An ELF without a symbol
    table (stripped) gives an empty dict. Accepts 32- and 64-bit ELFs of any machine."""
    if isinstance(source, (str, Path)):
        name = name or str(source)
        try:
            source = Path(source).read_bytes()
        except OSError as exc:
            raise ElfError(f"{name}: {exc.strerror}") from None
    name = name or "image"
    elf = _open(source, name)
    table: dict[str, int] = {}
    try:
        for section in elf.iter_sections():
            if not isinstance(section, SymbolTableSection) or section["sh_type"] != "SHT_SYMTAB":
                continue
            for sym in section.iter_symbols():
                kind = sym["st_info"]["type"]
                if not sym.name or kind in ("STT_SECTION", "STT_FILE") or sym["st_shndx"] == "SHN_UNDEF":
                    continue
                table.setdefault(sym.name, sym["st_value"])
    except _PyElfError as exc:
        raise ElfError(f"{name}: malformed symbol table: {exc}") from None
    return table
