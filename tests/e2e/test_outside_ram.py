"""Descriptor tables, handler segments and stacks with no RAM behind them end the run as the bare
machine ends it: a fault whose report names the guest-physical address, never a failure of the
hypervisor (a BusError escaping event delivery or a descriptor read, a traceback under bt)."""
from __future__ import annotations

import re

import pytest

from conftest import PROGRAMS, run_guest
from vmm.run_state import RunState

GUEST = PROGRAMS / "tables-outside-ram.asm"
SCENARIOS = {
    "r": 0xF0000084,   # real-mode IVT entry of INT 0x21
    "i": 0xF0000018,   # IDT gate of INT3
    "g": 0xF0000010,   # GDT entry of MOV ES, 0x10
    "j": 0xF0000008,   # GDT entry of a far JMP to 0x08
    "h": 0x2000008,    # the INT3 gate's code segment descriptor (GDT entry 0x1008)
    "s": 0xF00000F4,   # INT3's frame below ESP = 0xf0000100
}
_native: dict[str, object] = {}


def run(scenario: str, engine: str):
    return run_guest(str(GUEST), engine, input_data=scenario.encode())


def address(message: str) -> int:
    return int(re.search(r"guest-physical (0x[0-9a-f]+)", message).group(1), 16)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_an_access_outside_ram_ends_as_on_the_bare_machine(scenario, engine):
    if scenario not in _native:
        _native[scenario] = run(scenario, "native").result
    native = _native[scenario]
    assert native.state is RunState.GUEST_FAULT, native.report()
    assert address(native.message) == SCENARIOS[scenario]
    run_ = run(scenario, engine)
    result = run_.result
    assert run_.text == scenario                     # nothing ran past the access
    assert result.state is RunState.GUEST_FAULT, result.report()
    assert address(result.message) == SCENARIOS[scenario]
    assert "no RAM" in result.message or "outside RAM" in result.message
    assert result.rip == native.rip
    if engine != "vtx":   # vtx reports the CPU's own accesses as EPT violations, in its words
        assert result.message == native.message


def test_the_report_says_when_a_run_was_not_counted():
    result = run("g", "native").result
    assert result.uncounted and result.instructions == 0
    assert "0 instructions counted" not in result.report()
    assert "instructions not counted (the run was uncounted" in result.report()
