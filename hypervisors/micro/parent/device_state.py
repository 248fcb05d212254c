"""The parent partition's half of a child's snapshot: the state of every device model it runs
for that child (the PC board's port devices, the board's own state, the typed input still to
come) as one MessagePack blob, in the form vmm/snapshot/machine.py gives a monolithic VM's
devices, so a snapshot continues under either hypervisor (wire Op.SAVE_DEVICES and
Op.RESTORE_DEVICES).

A blob to restore comes from the hypervisor, which may be compromised or pass on a damaged file:
it is hostile input. It is unpacked with size limits, must name exactly this partition's
devices, and every value must keep the shape of the one it replaces (its type; for containers,
recursively); if a check fails or a device refuses its state, every device is put back as it
was and the request is refused with the reason. Nothing in a blob is ever executed.
"""
from __future__ import annotations

import msgpack

from hypervisors.micro.wire import MAX_PAYLOAD
from vmm.bus import Bus

ISA_MASK = 0xFFFF
_SCALARS = (bool, int, float, str, bytes)


class Refused(ValueError):
    """A save or restore this partition will not do; the message says why, on one line."""


def _devices(worker) -> dict:
    """Every device on the parent's port and MMIO buses for this child, named as machine.py
    names them."""
    return Bus.devices_by_window(worker.board.pio, worker.mmio)


def _state(worker) -> dict:
    return {"board": worker.board.save_state(),
            "devices": {key: device.save_state()
                        for key, device in _devices(worker).items()},
            "inputs": [worker.input.save_state()] if worker.scripted else []}


def save(worker) -> bytes:
    """The blob for Op.SAVE_DEVICES."""
    if worker.server.version is not None:
        raise Refused("the child opened VMBus channels, whose rings and GPADLs snapshots do "
                      "not carry")
    blob = msgpack.packb(_state(worker), use_bin_type=True)
    if len(blob) > MAX_PAYLOAD:
        raise Refused(f"the device state is {len(blob)} bytes, more than a reply carries")
    return blob


def restore(worker, blob: bytes) -> None:
    """Load an Op.RESTORE_DEVICES blob into the worker's devices, or refuse it and leave them
    as they were."""
    if worker.server.version is not None:
        raise Refused("the child opened VMBus channels: it is running, not a restore target")
    given = _unpack(blob)
    before = _state(worker)
    try:
        _check(before, given)
        _load(worker, given)
    except Exception as exc:  # noqa: BLE001 - any failure of hostile input is a refusal
        _load(worker, before)
        raise Refused(f"device state refused: {type(exc).__name__}: {exc}") from None
    worker.isa_levels = worker.isa_sent = given["isa_levels"]
    worker.isa_rises = 0


def _unpack(blob: bytes) -> dict:
    try:
        given = msgpack.unpackb(blob, raw=False, strict_map_key=False)   # lengths <= blob's
    except Exception as exc:  # noqa: BLE001 - msgpack raises several kinds on bad bytes
        raise Refused(f"device state is not MessagePack: {type(exc).__name__}") from None
    if not isinstance(given, dict) or set(given) != {"board", "devices", "inputs",
                                                     "isa_levels"}:
        raise Refused("device state must be a map of board, devices, inputs and isa_levels")
    levels = given["isa_levels"]
    if type(levels) is not int or not 0 <= levels <= ISA_MASK:
        raise Refused("isa_levels must be a 16-bit mask of ISA IRQ lines")
    return given


def _check(before: dict, given: dict) -> None:
    """``given`` has the shape of ``before``: the same devices, the same keys, the same types."""
    if set(given["devices"]) != set(before["devices"]):
        raise ValueError(f"devices differ: given {sorted(map(str, given['devices']))}, "
                         f"here {sorted(before['devices'])}")
    if len(given["inputs"]) != len(before["inputs"]):
        raise ValueError("the saved run had other input (--input) than this one")
    same_shape(before["board"], given["board"], "board")
    for key, state in before["devices"].items():
        same_shape(state, given["devices"][key], key)
    for state, saved in zip(before["inputs"], given["inputs"]):
        same_shape(state, saved, "input")


def same_shape(old, new, where: str) -> None:
    """ValueError unless ``new`` could be a value of what ``old`` is: the same type (None may
    stand for a scalar and a scalar for None: optional fields), maps with the same keys, and
    list items shaped like the old items (scalars if there were none)."""
    if isinstance(old, dict) or isinstance(new, dict):
        if not (isinstance(old, dict) and isinstance(new, dict)) or set(old) != set(new):
            raise ValueError(f"{where}: not the map it replaces")
        for key, value in old.items():
            same_shape(value, new[key], f"{where}.{key}")
    elif isinstance(old, list) or isinstance(new, list):
        if not (isinstance(old, list) and isinstance(new, list)):
            raise ValueError(f"{where}: not the list it replaces")
        for item in new:
            _item(old, item, where)
    elif old is None or new is None:
        if not isinstance(old if new is None else new, (*_SCALARS, type(None))):
            raise ValueError(f"{where}: not a scalar")
    elif type(old) is not type(new):
        raise ValueError(f"{where}: {type(new).__name__} where {type(old).__name__} belongs")


def _item(old: list, item, where: str) -> None:
    if not old:
        if not isinstance(item, (*_SCALARS, type(None))):
            raise ValueError(f"{where}: a list item that is not a scalar")
        return
    for model in old:
        try:
            return same_shape(model, item, f"{where}[]")
        except ValueError:
            continue
    raise ValueError(f"{where}: a list item unlike the items it replaces")


def _load(worker, state: dict) -> None:
    worker.board.load_state(state["board"])
    for key, device in _devices(worker).items():
        device.load_state(state["devices"][key])
    for saved in state["inputs"]:
        worker.input.load_state(saved)
