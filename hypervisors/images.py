"""Guest images: a shipped guest's name, an .asm source (assembled with emu.asm) or a flat binary.

A flat binary is loaded as a BIOS loads a boot sector: at 0x7C00, entered in real mode with
CS:IP = 0000:7C00 and DL = 0x80 (no BIOS services are provided). An assembled guest is loaded at
its ``org`` and entered there the same way.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import guests
from emu.asm import AsmError, assemble_file
from emu.cpu import CS, DS, EDX, ES, ESP, FS, GS, SS
from vmm.pc import elf

BOOT_ADDRESS = 0x7C00
BOOT_DRIVE = 0x80


class ImageError(ValueError):
    """The guest cannot be found or loaded; the message says why."""


@dataclass
class GuestImage:
    name: str
    code: bytes
    origin: int
    listing: list
    symbols: dict[str, int] = field(default_factory=dict)  # name -> linear address

    @property
    def entry(self) -> int:
        return self.origin


def resolve(spec: str, ram_size: int) -> GuestImage:
    """Turn a command-line GUEST argument into a loadable image."""
    path = Path(spec)
    if path.suffix == ".asm" or (not path.exists() and spec in guests.names()):
        source = path if path.suffix == ".asm" else guests.path(spec)
        image = _assembled(source)
    elif path.is_file():
        image = GuestImage(path.name, path.read_bytes(), BOOT_ADDRESS, [])
    else:
        raise ImageError(f"unknown guest {spec!r}: not a file, and not one of the shipped guests: "
                         + ", ".join(guests.names()))
    _check_fits(image, ram_size)
    return image


def _assembled(source: Path) -> GuestImage:
    if not source.is_file():
        raise ImageError(f"{source}: no such file")
    image = assemble_file(source)
    if not 0x500 <= image.origin <= 0xFFF0:
        raise ImageError(f"{source}: origin {image.origin:#x} cannot be entered from real mode at "
                         "CS = 0; start the source with an `org` such as `org 0x7c00`")
    return GuestImage(source.stem, image.code, image.origin, image.listing, image.labels)


def elf_symbols(path: Path) -> dict[str, int]:
    """An ELF kernel's symbol table for ``GuestImage.symbols`` (empty when it is stripped)."""
    try:
        return elf.symbols(path)
    except elf.ElfError as exc:
        raise ImageError(str(exc)) from None


def _check_fits(image: GuestImage, ram_size: int) -> None:
    if not image.code:
        raise ImageError(f"{image.name}: the image is empty")
    if image.origin + len(image.code) > ram_size:
        raise ImageError(f"{image.name}: {len(image.code)} bytes at {image.origin:#x} do not fit "
                         f"in {ram_size >> 20} MiB of guest RAM")


__all__ = ["AsmError", "GuestImage", "ImageError", "resolve", "elf_symbols", "BOOT_DRIVE"]


def hand_over(vm, image: GuestImage) -> None:
    """Load the image and hand over like a BIOS: real mode, CS:IP = 0000:entry, DL = 0x80, the
    stack just below the image."""
    vm.load(image.code, image.origin)
    cpu = vm.cpu
    for seg in (CS, DS, ES, SS, FS, GS):
        cpu.load_real_segment(seg, 0)
    cpu.eip = image.entry
    cpu.gpr[EDX] = BOOT_DRIVE
    cpu.gpr[ESP] = image.origin
