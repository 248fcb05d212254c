"""`trapvisor run GUEST --save FILE --at-exit N` and `trapvisor run --restore FILE`: a run
stopped after an exit (or an instruction count) and written to a snapshot file, and a run that
continues one in a new process (QEMU's savevm/loadvm across processes, Firecracker's snapshot
files).

Several exit numbers (``--at-exit 100,200,300``) write a full snapshot at the first and a diff
snapshot at each later one (FILE.1, FILE.2, ...: the pages written since the one before, found
by page hashes; vmm/snapshot/ram.py). A diff names the file it is based on; restoring it reads
the chain back to the full snapshot. The file's "meta" section is the run's configuration, so
a restore needs no guest: RAM holds it. ``--engine`` may pick another engine where the state
carries over (native <-> vtx, trap <-> bt); vtx continuing vtx keeps the saved VMCS controls
(their CR read shadows are guest state), and ``--exit-on`` at restore adds exits to them.

Under ``--hypervisor micro`` the VM is a child partition (hypervisors/micro/snapshots.py: the
parent partition saves and loads its device models); ``--hypervisor`` at restore may pick the
other hypervisor (the device state has one form), and without it the snapshot's is used.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from hypervisors.micro.hypervisor import MicroHypervisor
from hypervisors.micro.snapshots import PartitionMachine
from vmm.engines.vmx_controls import apply_exit_on
from vmm.snapshot import format as snapfile
from vmm.snapshot import machine, ram
from vmm.snapshot.engine_state import check_engine

META_KEYS = ("hypervisor", "engine", "exit_on", "ram", "input", "drives")
HYPERVISOR_NAMES = ("monolithic", "micro")


def points(text: str) -> list[int]:
    """'100,200' -> [100, 200]: increasing positive numbers."""
    try:
        values = [int(item, 0) for item in text.split(",")]
    except ValueError:
        raise ValueError(f"not a list of numbers: {text!r} (try 100 or 100,200)") from None
    if any(v <= 0 for v in values) or values != sorted(set(values)):
        raise ValueError(f"snapshot points must be positive and increasing: {text!r}")
    return values


def trigger(args, flag: str) -> tuple[list[int] | None, list[int] | None]:
    """(exit numbers, instruction counts) where --save or --migrate acts, one of them None."""
    exits = points(args.at_exit) if args.at_exit else None
    steps = points(args.at_instruction) if args.at_instruction else None
    if (exits is None) == (steps is None):
        raise ValueError(f"{flag} needs one of --at-exit N or --at-instruction N")
    if args.hypervisor == "micro" and (args.disk or args.inject_device_fault):
        raise ValueError(f"{flag} under --hypervisor micro cannot be combined with --disk or "
                         "--inject-device-fault (VMBus disks and injected faults are not "
                         "carried by snapshots)")
    if args.stdin or args.wall_clock or args.gdb:
        raise ValueError(f"{flag} cannot be combined with --stdin, --wall-clock or --gdb (their "
                         "input and time come from the host, not the guest's execution)")
    return exits, steps


def save_run(args, build, image, say=print) -> int | None:
    """Boot, run to each point, write the snapshots; None when all were written, else the
    guest's result (it ended before a point)."""
    exits, steps = trigger(args, "--save")
    hypervisor = machine_of(build([]))
    try:
        hypervisor.boot(image)
        return _save_points(args, hypervisor, exits, steps, say)
    finally:
        hypervisor.close()


def _save_points(args, hypervisor, exits, steps, say):
    base = hashes = None
    done = 0
    for index, point in enumerate(exits or steps):
        alive = (machine.run_to(hypervisor.vcpu, exit_number=point) if exits
                 else machine.run_to(hypervisor.vcpu, instructions=point - done))
        done = hypervisor.vcpu.instructions
        if not alive:
            return hypervisor.vcpu.result()
        snapshot = machine.capture(hypervisor, base, hashes)
        path = args.save if index == 0 else f"{args.save}.{index}"
        snapshot.put("meta", meta(args, base and _previous(args.save, index)))
        size = snapfile.write(path, snapshot)
        say(f"trapvisor: saved {snapfile.KINDS[snapshot.kind]} snapshot at exit "
            f"{hypervisor.vcpu.exit_count}, {done} instructions, to {path} ({size} bytes)",
            file=sys.stderr)
        if base is None:
            hashes = ram.PageHashes(hypervisor.vm.memory)
        base = snapshot
    return None


def machine_of(hypervisor):
    """The one VM a save or migration acts on: a monolithic hypervisor is one; under micro, a
    new child partition (closing it closes the hypervisor)."""
    if isinstance(hypervisor, MicroHypervisor):
        return PartitionMachine(hypervisor)
    return hypervisor


def _previous(save: str, index: int) -> str:
    return os.path.basename(save if index == 1 else f"{save}.{index - 1}")


def meta(args, based_on: str | None = None) -> dict:
    return {"hypervisor": args.hypervisor, "engine": args.engine, "exit_on": args.exit_on,
            "ram": args.ram, "drives": [str(Path(d).resolve()) for d in args.drive],
            "input": args.input, "based_on": based_on}


def load_chain(path: str) -> list[snapfile.Snapshot]:
    """The snapshot at ``path`` and, for a diff, the ones it is based on, oldest first."""
    chain = [snapfile.read(path)]
    while chain[0].kind == snapfile.DIFF:
        based_on = chain[0].get("meta").get("based_on")
        if not based_on:
            raise snapfile.SnapshotError(f"{path}: a diff snapshot that names no base")
        chain.insert(0, snapfile.read(Path(path).parent / based_on))
    return chain


def restored(args, make):
    """A machine built as the snapshot's run was (``make(hypervisor, **options)``), its state
    loaded. ``args.engine`` and ``args.hypervisor`` None keep the saved ones."""
    chain = load_chain(args.restore)
    hypervisor = built(chain[-1].get("meta"), args, make)
    try:
        machine.restore(hypervisor, chain)
        if hypervisor.vcpu.engine.name == "vtx" and args.exit_on:  # more exits than saved
            apply_exit_on(hypervisor.vcpu.engine.controls, args.exit_on)
            hypervisor.vcpu.engine.controls_changed()
    except BaseException:
        hypervisor.close()
        raise
    return hypervisor


def built(meta: dict, args, make):
    """A fresh machine configured as the saved run's ``meta`` says (the engine may be switched
    within its family by ``args.engine``, the hypervisor by ``args.hypervisor``)."""
    if not all(k in meta for k in META_KEYS) or meta["hypervisor"] not in HYPERVISOR_NAMES:
        raise snapfile.SnapshotError("the snapshot's meta section is incomplete")
    engine = args.engine or meta["engine"]
    check_engine(meta["engine"], engine)
    options = {"engine": engine, "ram_size": meta["ram"], "drives": meta["drives"],
               "input_data": meta["input"].encode().decode("unicode_escape").encode("latin-1")}
    if engine == "vtx" and (args.exit_on or meta["exit_on"]):
        options["exit_on"] = args.exit_on or meta["exit_on"]
    return make(args.hypervisor or meta["hypervisor"], **options)
