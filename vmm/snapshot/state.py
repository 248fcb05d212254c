"""Device state as plain data, for snapshots: a device lists the attributes that
make up its state in ``STATE`` and gets ``save_state()``/``load_state()`` from ``capture`` and
``restore`` here.

Plain data is what a snapshot file can hold without pickling: None, bool, int, float, str,
bytes, and lists and dicts of them. Containers whose type matters to the device (bytearray,
tuple, deque, set, timedelta) are tagged with a one-key dict ``{"~type": items}`` and rebuilt as
the same type; callbacks, clocks and IRQ lines are wiring, never state, and are not listed.
"""
from __future__ import annotations

from collections import deque
from datetime import timedelta

_TAGS = {"~bytearray": bytearray, "~tuple": tuple, "~deque": deque, "~set": set,
         "~frozenset": frozenset}
_NAMES = {kind: tag for tag, kind in _TAGS.items()}


class StateError(ValueError):
    """Saved state that does not fit the device it is loaded into."""


def plain(value):
    """``value`` as plain data (see the module docstring)."""
    if value is None or isinstance(value, (bool, int, float, str, bytes)):
        return value
    if isinstance(value, list):
        return [plain(item) for item in value]
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, timedelta):
        return {"~timedelta": [value.days, value.seconds, value.microseconds]}
    tag = _NAMES.get(type(value))
    if tag is None:
        raise StateError(f"{type(value).__name__} is not plain device state")
    if tag == "~bytearray":
        return {tag: bytes(value)}
    return {tag: [plain(item) for item in value]}


def rebuild(data):
    """The inverse of ``plain``."""
    if isinstance(data, list):
        return [rebuild(item) for item in data]
    if not isinstance(data, dict):
        return data
    if len(data) == 1:
        (tag, items), = data.items()
        if tag == "~timedelta":
            return timedelta(*items)
        if tag in _TAGS:
            return _TAGS[tag](items if tag == "~bytearray" else (rebuild(i) for i in items))
    return {key: rebuild(item) for key, item in data.items()}


def capture(device, names) -> dict:
    """The named attributes of ``device`` as plain data."""
    return {name: plain(getattr(device, name)) for name in names}


def restore(device, state: dict, names) -> None:
    """Set the named attributes of ``device`` from ``capture``'s output."""
    missing = [name for name in names if name not in state]
    if missing:
        raise StateError(f"{type(device).__name__} state lacks {', '.join(missing)}")
    for name in names:
        setattr(device, name, rebuild(state[name]))


class PlainState:
    """``save_state``/``load_state`` for a device whose state is exactly its ``STATE``
    attributes."""
    STATE: tuple[str, ...] = ()

    def save_state(self) -> dict:
        return capture(self, self.STATE)

    def load_state(self, state: dict) -> None:
        restore(self, state, self.STATE)
