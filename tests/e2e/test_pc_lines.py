"""The PC platform under both hypervisors: the A20 gate (physical address bit 20
masked while it is closed: tests/programs/a20.asm) and the reset line (i8042 command 0xFE, port
0x92 bit 0) between the board and the CPU, and pc-testdev's MMIO page. Under micro the gate and
the reset line live in the parent partition, so each change travels to
the hypervisor as a notification on the channel."""
from __future__ import annotations

from pathlib import Path

import pytest
from conftest import PROGRAMS, run_guest, trapvisor

from vmm.run_state import RunState

RESETS = {
    "i8042 0xFE": "mov al, 0xfe\n    out 0x64, al",
    "port 0x92 bit 0": "in al, 0x92\n    or al, 1\n    out 0x92, al",
}


def test_a20_wraps_at_1mib_only_while_closed(engine, hypervisor):
    run = run_guest(PROGRAMS / "a20.asm", engine, hypervisor)
    assert run.result.ok, run.result.report()
    assert run.text == "WNKC\n"


@pytest.mark.parametrize("how", list(RESETS))
def test_a_reset_pulse_ends_the_run_as_a_reset(engine, hypervisor, how, tmp_path: Path):
    source = tmp_path / "reset.asm"
    source.write_text(f"bits 16\norg 0x7c00\n    mov al, 'r'\n    out 0xe9, al\n"
                      f"    {RESETS[how]}\n    mov al, 'x'\n    out 0xe9, al\nspin:\n    jmp spin\n"
                      "times 510 - ($ - $$) db 0\ndw 0xaa55\n")
    run = run_guest(source, engine, hypervisor)
    assert run.result.state is RunState.RESET, run.result.report()
    assert run.text == "r"


def test_pc_testdev_scratch_page_reads_back(engine, hypervisor):
    """pc-testdev's MMIO page is the hypervisor's (vmm/pc/chipset.py), so micro has it too."""
    run = run_guest(PROGRAMS / "testdev-iomem.asm", engine, hypervisor)
    assert run.result.ok, run.result.report()
    assert run.text == "0x420x44434241\n"


@pytest.mark.parametrize("hypervisor_name", ["monolithic", "micro"])
def test_vga_shows_the_text_screen_under_both_hypervisors(hypervisor_name):
    """The CGA text buffer is guest RAM, which the hypervisor holds under both architectures."""
    guest = str(PROGRAMS / "vga.asm")
    done = trapvisor("run", guest, "--engine", "bt", "--hypervisor", hypervisor_name, "--vga")
    assert done.returncode == 0, done.stderr
    assert "|hello, screen" + " " * 67 + "|" in done.stderr.splitlines()


def test_vga_shows_each_vms_screen_with_several_guests(hypervisor):
    guest = str(PROGRAMS / "vga.asm")
    done = trapvisor("run", guest, str(PROGRAMS / "halt.asm"), guest, "--engine", "vtx",
                     "--hypervisor", hypervisor, "--vga")
    assert done.returncode == 3, done.stderr                  # halt.asm ends "halted"
    tops = [line for line in done.stderr.splitlines() if line.startswith("+- VM")]
    assert [top.split(" (")[0] for top in tops] == ["+- VM 1", "+- VM 3"]   # halt.asm wrote none
    assert done.stderr.count("|hello, screen ") == 2
