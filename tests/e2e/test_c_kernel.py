"""The C self-test kernel (guests/c/selftest): a Multiboot v1 kernel built with gcc that checks
the hand-over (command line, module), the local APIC and its timer, the I/O APIC with the PIT on
pin 2, and IDE PIO reads (polled and on IRQ 14), one PASS/FAIL line each on COM1.

Its expected transcript is QEMU's (tests/e2e/expected/c-selftest.txt): checked against
qemu-system-i386 when it is installed, then required of trapvisor under every engine and both
hypervisors. The kernel is built in a temporary directory; without a gcc that can build 32-bit
code the tests skip, saying why."""
from __future__ import annotations

import shutil
import subprocess

import pytest

import ckernel
from conftest import EXPECTED, trapvisor
from hypervisors.registry import HYPERVISORS
from vmm.engines import ENGINES
from vmm.pc.multiboot import MBI_ADDR, MODULE_ENTRY_SIZE, boot_multiboot, Module

GOLDEN = EXPECTED / ckernel.EXPECTED_NAME
QEMU_STATUS_0 = 1                           # isa-debug-exit: (0 << 1) | 1


@pytest.fixture(scope="module")
def selftest(tmp_path_factory) -> ckernel.SelftestFiles:
    problem = ckernel.gcc_problem()
    if problem:
        pytest.skip(problem)
    try:
        return ckernel.prepare(tmp_path_factory.mktemp("c-selftest"))
    except subprocess.CalledProcessError as exc:
        pytest.fail(f"the C self-test kernel does not build:\n{exc.stderr}")


def test_the_sources_ship_with_the_guests():
    for name in (*ckernel.SOURCES, ckernel.LINKER_SCRIPT):
        assert (ckernel.SOURCE / name).is_file(), name


def test_the_golden_transcript_passes_every_check():
    lines = GOLDEN.read_text().splitlines()
    checks = [line for line in lines if line.startswith(("PASS ", "FAIL "))]
    assert checks and all(line.startswith("PASS ") for line in checks)
    assert lines[-1] == f"DONE: all {len(checks)} checks passed"


@pytest.mark.skipif(shutil.which(ckernel.QEMU) is None, reason=f"{ckernel.QEMU} is not installed")
def test_qemu_still_gives_the_golden_transcript(selftest):
    done = subprocess.run(selftest.qemu_command(), capture_output=True, timeout=120)
    assert done.stdout.decode("latin-1") == GOLDEN.read_text()
    assert done.returncode == QEMU_STATUS_0, done.stderr.decode("latin-1")


class _Ram:
    """Guest memory for the loader: a bytearray with ``size`` and ``write``."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.data = bytearray(size)

    def write(self, addr: int, data: bytes) -> None:
        self.data[addr:addr + len(data)] = data


def test_the_multiboot_loader_lays_it_out_as_qemu_does(selftest):
    """What QEMU 7.2 shows the kernel (its verbose=1 INFO lines): the command line
    "KERNEL ARGS"; the module on the page after the kernel's page-aligned end, which holds the
    module list and strings (0x109000 for an image ending below 0x108000); information flags
    0x24F, BIOS drive 0x80, 639 KiB of base memory."""
    ram = _Ram(32 << 20)
    boot = boot_multiboot(ram, selftest.kernel, cmdline=ckernel.APPEND,
                          modules=[Module.from_spec(selftest.initrd)])
    assert boot.cmdline == f"{selftest.kernel} {ckernel.APPEND}"
    assert boot.info_address == MBI_ADDR
    flags, mem_lower, _, boot_device, _, mods_count, mods_addr = (
        int.from_bytes(ram.data[MBI_ADDR + 4 * i:MBI_ADDR + 4 * i + 4], "little")
        for i in range(7))
    assert (flags, mem_lower, boot_device, mods_count) == (0x24F, 639, 0x8000FFFF, 1)
    entry = ram.data[mods_addr:mods_addr + MODULE_ENTRY_SIZE]
    start, end = (int.from_bytes(entry[i:i + 4], "little") for i in (0, 4))
    kernel_end = max(region.end for region in boot.kernel)
    assert start == (kernel_end + 0xFFF & ~0xFFF) + 0x1000
    assert end - start == ckernel.MODULE_SIZE
    assert bytes(ram.data[start:end]) == ckernel.module_bytes()


@pytest.mark.parametrize("hypervisor", list(HYPERVISORS))
@pytest.mark.parametrize("engine", list(ENGINES))
def test_trapvisor_gives_qemus_transcript(selftest, engine, hypervisor):
    done = trapvisor(*selftest.trapvisor_args(), "--engine", engine, "--hypervisor", hypervisor,
                     "--timeout", "60")
    assert done.stdout == GOLDEN.read_text(), done.stderr
    assert done.returncode == 0, done.stderr
