"""32-bit IDIV of EDX:EAX = 2^63 by -1 is #DE on the CPU; Unicorn's helper would divide
INT64_MIN by -1 on the host and kill the hypervisor with SIGFPE. Under every engine and
hypervisor the guest's #DE handler runs, with the registers the IDIV saw, for each operand form
(tests/programs/idiv-overflow.asm; emu/divide_guard.py)."""
from __future__ import annotations

from conftest import PROGRAMS, run_guest, trapvisor

GUEST = PROGRAMS / "idiv-overflow.asm"


def test_idiv_overflow_is_the_guests_divide_error(engine, hypervisor):
    run = run_guest(str(GUEST), engine, hypervisor)
    assert run.result.ok and run.result.status == 0, run.result.report()
    assert run.output == b"RMAD\n"


def test_the_cli_survives_it():
    done = trapvisor("run", str(GUEST), "--engine", "native")
    assert done.returncode == 0 and done.stdout == "RMAD\n", done.stderr
