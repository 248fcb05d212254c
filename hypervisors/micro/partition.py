"""A child partition of the micro hypervisor: its RAM (a memfd the parent may map only where the
child grants it), one vCPU, a SynIC, the hypercall interface, and the channel to the parent
partition that runs its devices (Hyper-V's child partition, TLFS "Partitions").

The exit table is the shared one plus: port I/O through proxy windows to the parent, VMCALL as
the TLFS hypercall ABI, and RDMSR/WRMSR of synthetic MSRs. The interrupt controller the vCPU
sees is composite: SynIC vectors first, then the mirrored 8259 pair in the parent.
"""
from __future__ import annotations

import struct
from typing import Callable

from emu.cpu import EAX, EBX, ECX, EDI, EDX, ESI
from hypervisors.images import GuestImage, hand_over
from hypervisors.micro.hypercalls import HYPERCALL_MSRS, Hypercalls
from hypervisors.micro.proxy import (
    InputMirror,
    ParentChannel,
    PicMirror,
    TimerMirror,
    install_proxies,
)
from hypervisors.micro.slot import SlotEnd
from hypervisors.micro.synic import SYNIC_MSRS, SynIC
from hypervisors.micro.wire import RAISED, RECONFIGURED, Message, Op, Record
from vmm.exits import EXIT_HANDLERS, Outcome, handle_emulated
from vmm.pc.chipset import Chipset
from vmm.run_state import RunResult, RunState
from vmm.snapshot.state import StateError
from vmm.vcpu import Vcpu
from vmm.vm import Vm
from vmm.vmcs import ExitReason

PARENT_SINT = 2      # the SINT the parent's VMBus server posts to (Linux VMBUS_MESSAGE_SINT)


class CompositeChip:
    """What the vCPU acknowledges: pending SynIC vectors, then its local APIC (behind which are
    the IOAPIC and, through LINT0, the parent's 8259 pair)."""

    def __init__(self, synic: SynIC, apic):
        self.synic = synic
        self.apic = apic

    def all_masked(self) -> bool:
        return self.apic.all_masked() and not self.synic.has_interrupt()

    def has_interrupt(self) -> bool:
        return self.synic.has_interrupt() or self.apic.has_interrupt()

    def acknowledge(self) -> int:
        return self.synic.acknowledge() if self.synic.has_interrupt() else self.apic.acknowledge()


class ChildPartition:
    """One guest VM: built by MicroHypervisor, which supplies the channel to the parent."""

    def __init__(self, partition_id: int, name: str, vm: Vm, engine, sink: Callable[[bytes], None],
                 channel: SlotEnd, layout: bytes, **vcpu_options):
        self.partition_id = partition_id
        self.name = name
        self.vm = vm
        self.sink = sink
        self.device_error: str | None = None
        self.channel = ParentChannel(channel, vm.clock, self._on_record, self._on_lost,
                                     self._on_state, self._on_isa_lines)
        self._isa_levels = 0
        self._device_reply: tuple[bool, bytes] | None = None
        install_proxies(vm.pio, layout, self.channel, vm.mmio)
        self.synic = SynIC(vm.memory, vm.kick)
        self.chipset = Chipset(vm, extint=PicMirror(self.channel))
        vm.irq_chip = CompositeChip(self.synic, self.chipset.lapic)
        vm.timers.append(TimerMirror(self.channel, vm.clock))
        vm.input_sources.append(InputMirror(self.channel))
        self.hypercalls = Hypercalls(partition_id, vm.memory, self._post_message,
                                     self._signal_event,
                                     lambda: self.synic.queue_full(PARENT_SINT))
        handlers = {**EXIT_HANDLERS, ExitReason.VMCALL: self.handle_vmcall,
                    ExitReason.MSR_READ: self.handle_rdmsr, ExitReason.MSR_WRITE: self.handle_wrmsr}
        self.vcpu = Vcpu(vm, engine, handlers, **vcpu_options)

    # ----- notifications from the parent ---------------------------------------------------------
    def _on_record(self, record: Message) -> None:
        if record.op == Record.OUTPUT:
            self.sink(record.payload)
        elif record.op == Record.GUEST_EXIT:
            self.vcpu.guest_exit(record.value)
        elif record.op == Record.INPUT_DONE:
            self.vcpu.input_done()
        elif record.op == Record.RESET:
            self.vcpu.guest_reset()
        elif record.op == Record.A20:
            self.vcpu.engine.mmu.set_a20(bool(record.value))
        elif record.op == Record.POST:
            self.synic.post(record.aux, record.value, record.payload)
        elif record.op == Record.SIGNAL:
            self.synic.signal(record.aux, record.value)
        elif record.op in (Record.DEVICE_STATE, Record.REFUSED):
            self._device_reply = (record.op == Record.DEVICE_STATE, record.payload)
        elif record.op == Record.FAULT:
            self._device_failed(f"a device model failed in the parent partition: "
                                f"{record.payload.decode(errors='replace')}")

    def _on_lost(self, reason: str) -> None:
        self._device_failed(f"{reason}: this VM's devices are gone")

    def _device_failed(self, message: str) -> None:
        self.device_error = message
        self.vcpu.finish(RunState.DEVICE_ERROR, message)

    def _on_isa_lines(self, levels: int, rises: int) -> None:
        """The parent's ISA IRQ lines, mirrored onto this partition's IOAPIC pins: every line
        that rose since the last reply delivers its edge, then each takes its level now."""
        for irq in range(16):
            bit = 1 << irq
            if rises & bit:
                self.chipset.set_isa_irq(irq, True)
            if (levels ^ self._isa_levels) & bit or rises & bit:
                self.chipset.set_isa_irq(irq, bool(levels & bit))
        self._isa_levels = levels

    def _on_state(self, state: int) -> None:
        """What the parent's PIC did to the CPU's INTR line, done here (vm.kick, reconfigured)."""
        if state & RAISED:
            self.vm.kick()
        if state & RECONFIGURED:
            self.vm.reconfigured()

    # ----- hypercalls and synthetic MSRs ---------------------------------------------------------
    def _post_message(self, connection_id: int, message_type: int, payload: bytes) -> int:
        return self.channel.call(Op.POST_MESSAGE, value=connection_id,
                                 payload=struct.pack("<I", message_type) + payload) & 0xFFFF

    def _signal_event(self, connection_id: int, flag: int) -> int:
        return self.channel.call(Op.SIGNAL_EVENT, aux=flag, value=connection_id) & 0xFFFF

    def handle_vmcall(self, vcpu, exit) -> Outcome:
        """TLFS 32-bit ABI: EDX:EAX input value, EBX:ECX input GPA, EDI:ESI output GPA."""
        gpr = vcpu.cpu.gpr
        pair = lambda high, low: (gpr[high] & 0xFFFFFFFF) << 32 | gpr[low] & 0xFFFFFFFF
        result = self.hypercalls.call(pair(EDX, EAX), pair(EBX, ECX), pair(EDI, ESI))
        gpr[EAX], gpr[EDX] = result & 0xFFFFFFFF, result >> 32
        vcpu.engine.complete_vmcall(exit)
        return Outcome.STOP if vcpu.stopping else Outcome.RESUME

    def handle_rdmsr(self, vcpu, exit) -> Outcome:
        msr = vcpu.cpu.gpr[ECX] & 0xFFFFFFFF
        owner = self._msr_owner(msr)
        if owner is None:
            return handle_emulated(vcpu, exit)
        value = owner.read_msr(msr)
        vcpu.cpu.gpr[EAX], vcpu.cpu.gpr[EDX] = value & 0xFFFFFFFF, value >> 32
        self._skip(vcpu, exit)
        return Outcome.RESUME

    def handle_wrmsr(self, vcpu, exit) -> Outcome:
        gpr = vcpu.cpu.gpr
        msr = gpr[ECX] & 0xFFFFFFFF
        owner = self._msr_owner(msr)
        if owner is None:
            return handle_emulated(vcpu, exit)
        owner.write_msr(msr, (gpr[EDX] & 0xFFFFFFFF) << 32 | gpr[EAX] & 0xFFFFFFFF)
        self._skip(vcpu, exit)
        return Outcome.RESUME

    def _msr_owner(self, msr: int):
        if msr in SYNIC_MSRS:
            return self.synic
        return self.hypercalls if msr in HYPERCALL_MSRS else None

    @staticmethod
    def _skip(vcpu, exit) -> None:
        mask = 0xFFFFFFFF if vcpu.cpu.code_bits == 32 else 0xFFFF
        vcpu.cpu.eip = (vcpu.cpu.eip + exit.insn.size) & mask

    # ----- snapshots (hypervisors/micro/machine.py) ---------------------------------------------
    def save_devices(self) -> bytes:
        """The parent's state of this partition's devices (Op.SAVE_DEVICES)."""
        return self._device_request(Op.SAVE_DEVICES)

    def load_devices(self, blob: bytes, isa_levels: int) -> None:
        """Load device state into the parent (Op.RESTORE_DEVICES); ``isa_levels``: the ISA IRQ
        lines as the state leaves them, mirrored here as on the parent's side."""
        self._device_request(Op.RESTORE_DEVICES, blob)
        self._isa_levels = isa_levels

    def _device_request(self, op: Op, payload: bytes = b"") -> bytes:
        """The DEVICE_STATE payload (empty when the answer is a plain 0); StateError for a
        refusal, ConnectionError for a parent that is gone or answered something else."""
        self._device_reply = None
        value = self.channel.call(op, payload=payload)
        reply, self._device_reply = self._device_reply, None
        if self.channel.lost is not None:
            raise ConnectionError(self.channel.lost)
        if reply is not None and not reply[0]:
            raise StateError(f"the parent partition refused: {reply[1].decode(errors='replace')}")
        if value != 0 or (op == Op.SAVE_DEVICES and reply is None):
            raise ConnectionError(f"the parent partition did not answer {op.name}")
        return reply[1] if reply else b""

    # ----- running ------------------------------------------------------------------------------
    def boot(self, image: GuestImage) -> None:
        hand_over(self.vm, image)
        self.vcpu.engine.reset()

    def run(self, image: GuestImage) -> RunResult:
        """Boot and run to the end. This is the vCPU thread's boundary: whatever fails in it
        ends this VM alone (VMM_ERROR, with a report naming the VM); other VMs go on."""
        try:
            with self.pinned():
                self.boot(image)
                return self.vcpu.run()
        except Exception as exc:  # noqa: BLE001 - one VM's failure, never the thread's death
            return self.failed(exc)

    def pinned(self):
        """A context that runs the calling thread on the CPU the channel's placement gave this
        partition's vCPU: beside the parent's worker in sleep mode (a wake-up across cores
        costs ~50 µs each way), on the other CPU in poll mode (slot.py)."""
        return self.channel.link.pinned()

    def failed(self, exc: BaseException) -> RunResult:
        message = f"VM {self.partition_id} ({self.name}): {type(exc).__name__}: {exc}"
        self.vcpu.finish(RunState.VMM_ERROR, message)
        try:
            return self.vcpu.result()
        except Exception:  # noqa: BLE001 - the CPU cannot even be described: say what we know
            return RunResult(RunState.VMM_ERROR, None, message)

    def close(self) -> None:
        self.channel.close()
        self.vm.close()
