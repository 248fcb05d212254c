"""Capture and restore of a whole running machine: the CPU (CPUX86State, emu/cpu.py), the vCPU
loop's own state (interrupt shadow, halted, the instruction and exit counts), virtual time, the
engine (engine_state.py), every device on the port and MMIO buses, the board, the typed input
still to come, and guest RAM (ram.py).

``capture`` and ``restore`` work on a machine object: ``vm``, ``vcpu``, and ``save_devices()`` /
``load_devices(state)`` for the device side (``save_devices`` and ``load_devices`` here for a VM
whose devices are all in this process; the micro hypervisor's child partition gathers its own
from the parent partition, hypervisors/micro/snapshots.py). The device state has the same form
under both hypervisors, so a snapshot continues under either. Restore goes into a freshly built,
never booted machine. Afterwards every cache of guest state kept
outside the saved state is dropped: Unicorn's translations and TLB (``Cpu.load_context``) and
whatever registered itself in ``vm.restore_hooks`` (an MMU's shadow, event delivery's caches).
"""
from __future__ import annotations

from vmm.bus import Bus
from vmm.clock import InstructionClock
from vmm.snapshot import ram
from vmm.snapshot.engine_state import load_engine, save_engine
from vmm.snapshot.format import DIFF, FULL, Snapshot, SnapshotError
from vmm.snapshot.state import StateError

VCPU_STATE = ("instructions", "uncounted", "halted", "interrupt_shadow", "_window_step")
DEVICE_KEYS = ("board", "devices", "inputs")


def capture(hypervisor, base: Snapshot | None = None,
            hashes: ram.PageHashes | None = None) -> Snapshot:
    """The machine as it stands (paused between runs). With ``base`` and the ``hashes`` taken at
    it, a diff snapshot holding only the pages written since."""
    vm, vcpu = hypervisor.vm, hypervisor.vcpu
    if not isinstance(vm.clock, InstructionClock):
        raise SnapshotError("--wall-clock runs cannot be snapshotted: their time is the host's")
    snapshot = Snapshot(DIFF if base is not None else FULL)
    if base is not None:
        snapshot.base = base.ident
        pages = hashes.dirty(vm.memory)
    else:
        pages = ram.nonzero_pages(vm.memory)
    snapshot.sections["cpu"] = vm.cpu.save_context()
    snapshot.put("machine", {
        "vcpu": {name: getattr(vcpu, name) for name in VCPU_STATE},
        "exits": vcpu.exits.count,
        "clock_ns": vm.clock.base_ns,
        "engine": save_engine(vcpu.engine),
        **hypervisor.save_devices()})
    snapshot.sections["ram"] = ram.encode(vm.memory, pages)
    return snapshot


def devices_of(vm) -> dict[str, object]:
    """Every device on the VM's buses, named by bus and window base."""
    return Bus.devices_by_window(vm.pio, vm.mmio)


def save_device_states(devices: dict) -> dict[str, dict]:
    """``save_state()`` of each device in a ``{key: device}`` map."""
    saved = {}
    for key, device in devices.items():
        if not hasattr(device, "save_state"):
            raise SnapshotError(f"device {getattr(device, 'name', key)} at {key} cannot be saved")
        saved[key] = device.save_state()
    return saved


def save_devices(vm, board) -> dict:
    """The device side of a VM whose devices all run in this process: the board, every device
    on its buses, the typed input still to come."""
    return {"board": board.save_state(), "devices": save_device_states(devices_of(vm)),
            "inputs": [source.save_state() for source in vm.input_sources]}


def load_devices(vm, board, state: dict) -> None:
    """The inverse of ``save_devices``."""
    board.load_state(state["board"])
    devices, saved = devices_of(vm), state["devices"]
    if set(devices) != set(saved):
        raise StateError(f"devices differ: saved {sorted(saved)}, here {sorted(devices)}")
    for key, device in devices.items():
        device.load_state(saved[key])
    if len(vm.input_sources) != len(state["inputs"]):
        raise StateError("the saved run had other input (--input) than this one")
    for source, saved_input in zip(vm.input_sources, state["inputs"]):
        source.load_state(saved_input)


def restore(hypervisor, chain: list[Snapshot]) -> None:
    """Put a snapshot into a fresh hypervisor built like the one that saved it. ``chain`` is
    the full snapshot and the diffs taken after it, oldest first: their pages are applied in
    order, and the machine state is the last one's."""
    for older, newer in zip(chain, chain[1:]):
        if newer.kind != DIFF or newer.base != older.ident:
            raise SnapshotError("a diff snapshot is not based on the snapshot before it")
    if chain[0].kind != FULL:
        raise SnapshotError("a diff snapshot needs the full snapshot it is based on")
    for snapshot in chain[:-1]:
        _pages(hypervisor, snapshot.raw("ram"))
    load(hypervisor, chain[-1])


def load(hypervisor, snapshot: Snapshot) -> None:
    """Apply one snapshot's pages onto the RAM as it stands (a diff onto what its base, or a
    migration's earlier rounds, put there), then its CPU and machine state."""
    vm, vcpu = hypervisor.vm, hypervisor.vcpu
    _pages(hypervisor, snapshot.raw("ram"))
    try:
        vm.cpu.load_context(snapshot.raw("cpu"))
        _restore_machine(hypervisor, snapshot.get("machine"))
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, SnapshotError):
            raise
        raise SnapshotError(f"the snapshot's state does not fit this machine: {exc}") from None
    for hook in vm.restore_hooks:
        hook()
    vcpu.control.pause_requested = False


def _pages(hypervisor, blob: bytes) -> None:
    try:
        ram.apply(hypervisor.vm.memory, blob)
    except (ValueError, IndexError) as exc:
        raise SnapshotError(f"the snapshot's RAM does not fit this machine: {exc}") from None


def _restore_machine(hypervisor, machine: dict) -> None:
    vm, vcpu = hypervisor.vm, hypervisor.vcpu
    for name in VCPU_STATE:
        setattr(vcpu, name, machine["vcpu"][name])
    vcpu.exits.count = machine["exits"]
    vm.clock.base_ns = machine["clock_ns"]
    load_engine(vcpu.engine, machine["engine"])
    hypervisor.load_devices({key: machine[key] for key in DEVICE_KEYS})


class _PauseAtExit:
    """An observer that pauses the run right after exit ``number`` was handled."""

    def __init__(self, control, number: int):
        self.control, self.number = control, number

    def on_exit(self, vcpu, exit) -> None:
        return None

    def on_entry(self, vcpu, exit, outcome) -> None:
        if vcpu.exits.count >= self.number:
            self.control.request_pause()


def run_to(vcpu, exit_number: int | None = None, instructions: int | None = None) -> bool:
    """Run in precise mode (every run counted, as under the debugger, so the pause lands right
    after that exit or instruction) until exit ``exit_number`` was handled or ``instructions``
    more have retired; True if the guest is still running there (a snapshot can be taken)."""
    control = vcpu.control
    control.precise = True
    pause = _PauseAtExit(control, exit_number) if exit_number is not None else None
    if pause is not None:
        vcpu.exits.observers.append(pause)
    control.step(instructions)
    try:
        if exit_number is None or vcpu.exits.count < exit_number:
            vcpu.resume()
    finally:
        control.step(None)
        control.precise = False
        if pause is not None:
            vcpu.exits.observers.remove(pause)
    return not vcpu.stopping
