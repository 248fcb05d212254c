"""A child partition of the micro hypervisor as vmm/snapshot/machine.py sees a machine, so
`--save`, `--restore`, `--migrate` and `--incoming` work under micro, and parent servicing
(servicing.py) can park and resume its children.

Its device state has two halves, joined into the form a monolithic VM's has: the hypervisor
keeps the chipset (LAPIC, IOAPIC: vmm/pc/chipset.py), the parent partition every port device,
the board's own state and the typed input, which it sends and takes as a blob over the child's
channel (wire Op.SAVE_DEVICES / Op.RESTORE_DEVICES, parent/device_state.py). What only micro
has is refused rather than lost: a guest that enabled the SynIC or hypercalls (VMBus) cannot be
saved.
"""
from __future__ import annotations

import msgpack

from hypervisors.micro.partition import ChildPartition
from hypervisors.micro.proxy import ProxyDevice
from hypervisors.micro.synic import HV_SYNIC_SINT_MASKED
from vmm.devices.pic8259 import CASCADE_IR
from vmm.pc.chipset import isa_pin
from vmm.snapshot import machine
from vmm.snapshot.state import StateError

ISA_IRQS = 16


class PartitionMachine:
    """One child partition of ``hypervisor`` (a new one unless ``partition`` is given), with
    the machine interface snapshots use: ``vm``, ``vcpu``, ``boot``, ``save_devices``,
    ``load_devices``; ``close`` closes the whole hypervisor."""

    def __init__(self, hypervisor, partition: ChildPartition | None = None):
        self.hypervisor = hypervisor
        self.partition = partition or hypervisor.create_partition()

    @property
    def vm(self):
        return self.partition.vm

    @property
    def vcpu(self):
        return self.partition.vcpu

    def boot(self, image) -> None:
        self.partition.boot(image)

    def save_devices(self) -> dict:
        refuse_enlightened(self.partition)
        state = msgpack.unpackb(self.partition.save_devices(), raw=False,
                                strict_map_key=False)
        state["devices"].update(machine.save_device_states(self._local()))
        return state

    def load_devices(self, state: dict) -> None:
        saved = dict(state["devices"])
        for key, device in self._local().items():
            if key not in saved:
                raise StateError(f"the saved machine has no {key} ({device.name})")
            device.load_state(saved.pop(key))
        levels = self._isa_levels()
        blob = msgpack.packb({"board": state["board"], "devices": saved,
                              "inputs": state["inputs"], "isa_levels": levels},
                             use_bin_type=True)
        self.partition.load_devices(blob, levels)

    def _local(self) -> dict:
        """The devices this process runs for the child (the chipset), by bus and window."""
        return {key: device for key, device in machine.devices_of(self.vm).items()
                if not isinstance(device, ProxyDevice)}

    def _isa_levels(self) -> int:
        """The ISA IRQ lines as the IOAPIC's pins hold them."""
        pins = self.partition.chipset.ioapic.levels
        return sum(1 << irq for irq in range(ISA_IRQS)
                   if irq != CASCADE_IR and pins[isa_pin(irq)])

    def close(self) -> None:
        self.hypervisor.close()


def refuse_enlightened(partition: ChildPartition) -> None:
    """StateError if the guest enabled what snapshots do not carry: the SynIC, hypercalls."""
    synic, hypercalls = partition.synic, partition.hypercalls
    if (synic.scontrol or synic.simp or synic.siefp or hypercalls.guest_os_id
            or hypercalls.hypercall_msr
            or any(sint != HV_SYNIC_SINT_MASKED for sint in synic.sint)):
        raise StateError(f"VM {partition.partition_id} ({partition.name}) enabled the SynIC or "
                         "hypercalls (VMBus): snapshots do not carry their state")
