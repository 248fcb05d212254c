"""Guest images, and the BIOS-like hand-over both hypervisors boot them with.

- A shipped guest's name, an .asm source (assembled with emu.asm) or a flat binary: loaded as a
  BIOS loads a boot sector (a flat binary at 0x7C00, an assembled guest at its ``org``) and
  entered in real mode with CS:IP = 0000:entry and DL = 0x80. No BIOS services, and no firmware
  state: these guests were written for this machine.
- An ELF file: a Multiboot v1 kernel, loaded and entered as QEMU's ``-kernel -append -initrd``
  do (vmm/pc/multiboot.py).
- No guest, and disks (``--drive``): sector 0 of the first drive, booted like a PC BIOS
  (vmm/pc/bios.py).
The last two find what a PC firmware leaves: the BIOS data area, the MP tables, and the 8259s
programmed with the BIOS's vector bases and masks.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import guests
from emu.asm import AsmError, assemble_file
from vmm.pc import elf
from vmm.pc.bios import PIC_INIT_SEQUENCE, boot_disk, read_boot_sector
from vmm.pc.handover import BootError, HandOver, real_mode_handover
from vmm.pc.multiboot import Module, boot_multiboot

BOOT_ADDRESS = 0x7C00
BOOT_DRIVE = 0x80
ELF_MAGIC_BYTES = 4


class ImageError(ValueError):
    """The guest cannot be found or loaded; the message says why."""


@dataclass
class GuestImage:
    """A flat image entered in real mode at its origin (no firmware state)."""
    name: str
    code: bytes
    origin: int
    listing: list
    symbols: dict[str, int] = field(default_factory=dict)  # name -> linear address
    firmware = False

    @property
    def entry(self) -> int:
        return self.origin

    @property
    def symbols_end(self) -> int:
        """Where the image's labels stop naming addresses (the debugger's ``<label+off>``)."""
        return self.origin + len(self.code)

    def load(self, memory) -> HandOver:
        memory.write(self.origin, self.code)
        return real_mode_handover(self.entry, edx=BOOT_DRIVE, esp=self.origin)


@dataclass
class MultibootKernel:
    """A Multiboot v1 kernel with its command line and modules."""
    name: str
    data: bytes
    cmdline: str = ""
    modules: list[Module] = field(default_factory=list)
    hard_disks: int = 0
    listing: list = field(default_factory=list)
    symbols: dict[str, int] = field(default_factory=dict)  # the ELF's symbol table
    firmware = True
    symbols_end = 1 << 32   # an ELF's symbols name addresses anywhere in the kernel

    def load(self, memory) -> HandOver:
        return boot_multiboot(memory, self.data, name=self.name, cmdline=self.cmdline,
                              modules=self.modules, hard_disks=self.hard_disks).handover


@dataclass
class DiskBoot:
    """The first drive's boot sector, booted like a PC BIOS."""
    name: str
    path: str
    listing: list = field(default_factory=list)
    symbols: dict[str, int] = field(default_factory=dict)
    firmware = True
    symbols_end = 0

    def load(self, memory) -> HandOver:
        return boot_disk(memory, self.path, name=self.name)


class _SizeOnly:
    """Guest memory of a given size that keeps nothing: a loader's dry run, to find every error
    before a VM exists."""

    def __init__(self, size: int):
        self.size = size

    def write(self, addr: int, data: bytes) -> None:
        return None


def resolve(spec: str | None, ram_size: int, append: str = "", initrds=(), drives=()):
    """Turn the command line's GUEST (None: boot the first of ``drives``) into a loadable
    image; raise ImageError, BootError (both ValueErrors) or AsmError with a one-line reason."""
    if spec is None:
        if not drives:
            raise ImageError("no guest: name a guest, an .asm file, a binary or an ELF kernel, "
                             "or boot a disk with --drive FILE")
        read_boot_sector(drives[0])
        image = DiskBoot(Path(drives[0]).name, str(drives[0]))
    else:
        image = _image(spec, ram_size, append, initrds, len(drives))
    if (append or initrds) and not isinstance(image, MultibootKernel):
        raise ImageError(f"{image.name}: --append and --initrd are for a Multiboot ELF kernel")
    if not isinstance(image, GuestImage):
        image.load(_SizeOnly(ram_size))
    else:
        _check_fits(image, ram_size)
    return image


def _image(spec: str, ram_size: int, append: str, initrds, hard_disks: int):
    path = Path(spec)
    if path.suffix == ".asm" or (not path.exists() and spec in guests.names()):
        return _assembled(path if path.suffix == ".asm" else guests.path(spec))
    if not path.is_file():
        raise ImageError(f"unknown guest {spec!r}: not a file, and not one of the shipped guests: "
                         + ", ".join(guests.names()))
    data = path.read_bytes()
    if elf.is_elf(data[:ELF_MAGIC_BYTES]):
        modules = [Module.from_spec(item) for item in initrds]
        return MultibootKernel(path.name, data, append, modules, hard_disks,
                               symbols=elf_symbols(data))
    return GuestImage(path.name, data, BOOT_ADDRESS, [])


def _assembled(source: Path) -> GuestImage:
    if not source.is_file():
        raise ImageError(f"{source}: no such file")
    try:
        image = assemble_file(source)
    except OSError as exc:
        raise ImageError(f"{source}: cannot read it: {exc.strerror}") from None
    if not 0x500 <= image.origin <= 0xFFF0:
        raise ImageError(f"{source}: origin {image.origin:#x} cannot be entered from real mode at "
                         "CS = 0; start the source with an `org` such as `org 0x7c00`")
    return GuestImage(source.stem, image.code, image.origin, image.listing, image.labels)


def elf_symbols(source: bytes | Path) -> dict[str, int]:
    """An ELF kernel's symbol table (empty when it is stripped)."""
    try:
        return elf.symbols(source)
    except elf.ElfError as exc:
        raise ImageError(str(exc)) from None


def _check_fits(image: GuestImage, ram_size: int) -> None:
    if not image.code:
        raise ImageError(f"{image.name}: the image is empty")
    if image.origin + len(image.code) > ram_size:
        raise ImageError(f"{image.name}: {len(image.code)} bytes at {image.origin:#x} do not fit "
                         f"in {ram_size >> 20} MiB of guest RAM")


def hand_over(vm, image) -> None:
    """Load the image and leave the CPU (and, for firmware boots, the 8259s) as a PC firmware
    leaves them for it."""
    image.load(vm.memory).apply(vm.cpu)
    if image.firmware:
        for port, value in PIC_INIT_SEQUENCE:
            vm.pio.write(port, 1, value)


__all__ = ["AsmError", "BootError", "DiskBoot", "GuestImage", "ImageError", "MultibootKernel",
           "resolve", "hand_over", "elf_symbols", "BOOT_DRIVE"]
