"""The C self-test kernel (guests/c/selftest): built with gcc, no Makefile, and the files it
checks: the Multiboot module and the IDE disk image. Their contents are defined twice, here and
at the top of selftest.c; a change to one is a change to both.

    files = prepare(tmp_dir)             # files.kernel, files.module, files.disk
    qemu-system-i386 -kernel K -append APPEND -initrd "MODULE MODULE_ARGS" -drive file=DISK,...
    trapvisor run K --append APPEND --initrd "MODULE MODULE_ARGS" --drive DISK

``gcc_problem()`` says why this machine cannot build 32-bit freestanding code (no gcc, no -m32
support in the compiler or binutils), or None; the tests skip with that reason.

From the command line, ``python tests/ckernel.py DIR`` builds the kernel into DIR, writes its
module and disk image there and prints the commands that run it.
"""
from __future__ import annotations

import functools
import shlex
import shutil
import struct
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from guests import GUEST_DIR

SOURCE = GUEST_DIR / "c" / "selftest"
SOURCES = ("entry.S", "selftest.c")
LINKER_SCRIPT = "selftest.ld"

# The compiler flags of the exercise, plus: warnings; no SSE/x87 registers (the kernel never
# enables them: CR0.EM/CR4.OSFXSR); no .eh_frame unwind tables.
CFLAGS = ("-m32", "-ffreestanding", "-fno-pic", "-fno-stack-protector", "-nostdlib", "-O2",
          "-Wall", "-Wextra", "-mgeneral-regs-only", "-fno-asynchronous-unwind-tables")
# A static, non-PIE ELF laid out by the linker script; no build-id note.
LDFLAGS = ("-m32", "-nostdlib", "-static", "-no-pie", "-Wl,--build-id=none")

APPEND = "selftest=1 name=trapvisor"        # the command line (after the kernel's own name)
MODULE_ARGS = "selftest-module"             # the module's string is "PATH selftest-module"
MODULE_MAGIC = b"trapvisor module"
MODULE_SIZE = 3000
DISK_SECTORS = 2048
SECTOR = 512

QEMU = "qemu-system-i386"
EXPECTED_NAME = "c-selftest.txt"            # tests/e2e/expected/: QEMU's transcript


def module_bytes() -> bytes:
    """16 bytes of magic, then byte i is (i * 7 + 3) & 0xFF; 3000 bytes (not a page multiple,
    so mod_end is checked exactly)."""
    rest = range(len(MODULE_MAGIC), MODULE_SIZE)
    return MODULE_MAGIC + bytes((i * 7 + 3) & 0xFF for i in rest)


def sector_bytes(lba: int) -> bytes:
    """Sector ``lba``: its number (32-bit little-endian), then byte i is (lba + i) & 0xFF."""
    return struct.pack("<I", lba) + bytes((lba + i) & 0xFF for i in range(4, SECTOR))


def disk_bytes() -> bytes:
    """A 1 MiB raw disk image (2048 sectors)."""
    return b"".join(sector_bytes(lba) for lba in range(DISK_SECTORS))


def _run(command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=120)


@functools.lru_cache(maxsize=None)
def gcc_problem() -> str | None:
    """Why gcc cannot build a 32-bit freestanding ELF here (compile and link a one-line C file
    with the kernel's flags), or None if it can."""
    gcc = shutil.which("gcc")
    if gcc is None:
        return "gcc is not installed"
    with tempfile.TemporaryDirectory() as tmp:
        tmp_dir = Path(tmp)
        (tmp_dir / "probe.c").write_text("void _start(void) { for (;;) ; }\n")
        result = _run([gcc, *CFLAGS, *LDFLAGS, "-o", "probe.elf", "probe.c"], tmp_dir)
        if result.returncode != 0:
            first = (result.stderr.strip().splitlines() or ["(no message)"])[0]
            return f"gcc cannot build 32-bit freestanding code (-m32): {first}"
    return None


def build_kernel(out_dir: Path) -> Path:
    """Compile entry.S and selftest.c and link them at 1 MiB; returns the ELF's path. Raises
    ``subprocess.CalledProcessError`` (with gcc's messages) if the build fails."""
    out_dir.mkdir(parents=True, exist_ok=True)
    objects = []
    for name in SOURCES:
        obj = out_dir / (Path(name).stem + ".o")
        subprocess.run(["gcc", *CFLAGS, "-c", str(SOURCE / name), "-o", str(obj)], check=True,
                       capture_output=True, text=True)
        objects.append(str(obj))
    kernel = out_dir / "selftest.elf"
    subprocess.run(["gcc", *LDFLAGS, "-T", str(SOURCE / LINKER_SCRIPT), "-o", str(kernel),
                    *objects], check=True, capture_output=True, text=True)
    return kernel


@dataclass(frozen=True)
class SelftestFiles:
    kernel: Path
    module: Path
    disk: Path

    @property
    def initrd(self) -> str:
        """The --initrd / -initrd argument: the module's path and its string's arguments."""
        return f"{self.module} {MODULE_ARGS}"

    def qemu_command(self, append: str = APPEND) -> list[str]:
        """QEMU's -kernel boot of the kernel, serial on stdout, isa-debug-exit at 0xF4."""
        return [QEMU, "-kernel", str(self.kernel), "-append", append, "-initrd", self.initrd,
                "-drive", f"file={self.disk},format=raw,if=ide,index=0",
                "-device", "isa-debug-exit,iobase=0xf4,iosize=4", "-display", "none",
                "-serial", "stdio", "-no-reboot"]

    def trapvisor_args(self, append: str = APPEND) -> list[str]:
        """`trapvisor run` arguments for the same boot."""
        return ["run", str(self.kernel), "--append", append, "--initrd", self.initrd,
                "--drive", str(self.disk)]


def write_inputs(out_dir: Path) -> tuple[Path, Path]:
    """The module (mod.bin) and the disk image (disk.img) the kernel checks, in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    module = out_dir / "mod.bin"
    module.write_bytes(module_bytes())
    disk = out_dir / "disk.img"
    disk.write_bytes(disk_bytes())
    return module, disk


def prepare(out_dir: Path) -> SelftestFiles:
    """The kernel, its module and its disk image in ``out_dir``."""
    kernel = build_kernel(out_dir)
    return SelftestFiles(kernel, *write_inputs(out_dir))


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python tests/ckernel.py DIR   (build the C self-test kernel and its inputs "
              "into DIR)", file=sys.stderr)
        return 2
    problem = gcc_problem()
    if problem:
        print(problem, file=sys.stderr)
        return 1
    try:
        files = prepare(Path(argv[0]).resolve())
    except subprocess.CalledProcessError as exc:
        print(exc.stderr, file=sys.stderr)
        return 1
    print("trapvisor", shlex.join(files.trapvisor_args()))
    print(shlex.join(files.qemu_command()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
