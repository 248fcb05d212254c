"""A device model that fails under the monolithic hypervisor ends the run at the access that
reached it: no later instruction reaches a device, and the report names the faulting one."""
from __future__ import annotations

from hypervisors.images import resolve
from hypervisors.monolithic import MonolithicHypervisor
from vmm.devices.faults import FaultyDevice, inject_fault
from vmm.run_state import RunState

FIRST_UART_ACCESS = 0x7C0A   # hello: `out dx, al` to the UART's IER, its first UART access


def test_a_failing_device_ends_the_run_at_the_faulting_access(engine):
    hypervisor = MonolithicHypervisor(engine=engine, timeout=60)
    accesses = []
    try:
        inject_fault(hypervisor.vm.pio, "uart16550")
        faulty = next(device for _base, _length, device in hypervisor.vm.pio.entries()
                      if isinstance(device, FaultyDevice))
        write = faulty.write
        faulty.write = lambda *args: (accesses.append(args), write(*args))
        result = hypervisor.run(resolve("hello", hypervisor.vm.memory.size))
    finally:
        hypervisor.close()
    assert result.state is RunState.VMM_ERROR
    assert "DeviceFault: uart16550" in result.message
    assert len(accesses) == 1                       # the block's later UART writes went nowhere
    assert result.rip == FIRST_UART_ACCESS
    assert "out dx, al" in result.instruction
    if result.last_exits:
        assert f"rip={FIRST_UART_ACCESS:#010x}" in result.last_exits[-1]
