"""The vCPU's timer work (vmm/vcpu.py): slices that end before the next timer deadline update no
timer; a deadline that passes is still met."""
from __future__ import annotations

import pytest

from benchmarks.harness import build
from hypervisors.monolithic import MonolithicHypervisor

TICKS = 300     # exit-hlt: STI; HLT woken by a PIT tick, TICKS times


@pytest.mark.parametrize("engine", ["native", "trap"])
def test_timers_are_updated_once_per_tick_not_once_per_slice(engine):
    hypervisor = MonolithicHypervisor(engine=engine, ram_size=8 << 20)
    pit = hypervisor.board.pit
    updates = []
    update = pit.update
    pit.update = lambda: (updates.append(True), update())[1]
    try:
        result = hypervisor.run(build("exit-hlt", TICKS))
    finally:
        hypervisor.close()
    assert result.ok and result.status == 0, result.report()
    # every tick wakes the HLT (one update as the idle CPU reaches the deadline); the slices that
    # run the handler and stop at the next HLT end before the next deadline: no update after them
    assert TICKS <= len(updates) <= TICKS + 10
