"""emu/baseline.py, the bench's bare-machine baseline: a flat boot image runs on stock Unicorn to
its debug-exit write in both TLB modes (the virtual one through the fill hook), and an image that
never writes its status is an error, not a figure. Nothing is timed here."""
from __future__ import annotations

import pytest

from benchmarks.harness import RAM, Guest
from emu.asm import assemble
from emu.baseline import TLB_MODES, BaselineError, run_flat_image


@pytest.mark.parametrize("tlb", TLB_MODES)
def test_the_compute_guest_runs_to_its_exit(tlb):
    image = Guest.load("compute32").with_params(1000, 0)
    done = run_flat_image(image.code, image.origin, RAM, tlb)
    assert done.status == 0 and done.seconds > 0
    assert (done.fills > 0) == (tlb == "virtual-split")


def test_the_status_byte_is_the_guests():
    image = assemble("bits 16\norg 0x7c00\nmov al, 7\nout 0xf4, al\nhlt\n")
    assert run_flat_image(image.code, image.origin, 1 << 20).status == 7


def test_an_image_that_halts_without_its_status_is_refused():
    image = assemble("bits 16\norg 0x7c00\nhlt\n")
    with pytest.raises(BaselineError, match="without writing its status"):
        run_flat_image(image.code, image.origin, 1 << 20, "virtual-split")


def test_an_unknown_tlb_mode_is_refused():
    with pytest.raises(ValueError, match="unknown TLB mode"):
        run_flat_image(b"\xf4", 0x7c00, 1 << 20, "physical")
