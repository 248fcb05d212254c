"""The parent partition's SAVE_DEVICES / RESTORE_DEVICES treat a blob as hostile input: every
bad blob is refused with a reason, the parent lives on, the partition's devices are exactly as
they were, and the guest then runs to its normal end in that partition."""
from __future__ import annotations

import msgpack
import pytest

from hypervisors.images import resolve
from hypervisors.micro.hypervisor import MicroHypervisor
from hypervisors.micro.parent.device_state import same_shape
from vmm.snapshot.state import StateError
from vmm.vm import DEFAULT_RAM


def _pack(value) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def _bad_blobs(good: dict) -> dict[str, bytes]:
    """Damaged versions of a valid restore blob, each named by what is wrong."""
    def changed(edit):
        state = msgpack.unpackb(_pack(good), raw=False, strict_map_key=False)
        edit(state)
        return _pack(state)
    deep = b"\x91" * 5000 + b"\x90"      # 5000 nested one-item arrays: beyond the packer
    return {
        "not MessagePack": b"\xc1\xc1\xc1",
        "truncated": _pack(good)[:-7],
        "not a map": _pack([1, 2, 3]),
        "a missing key": changed(lambda s: s.pop("inputs")),
        "isa_levels out of range": changed(lambda s: s.update(isa_levels=1 << 20)),
        "a device too many": changed(lambda s: s["devices"].update({"pio:0x1234": {}})),
        "a device missing": changed(lambda s: s["devices"].pop("pio:0x40")),
        "a string for a register": changed(lambda s: s["devices"]["pio:0x20"].update(imr="ff")),
        "a map for a list": changed(lambda s: s["devices"]["pio:0x40"].update(counters={})),
        "a register missing": changed(lambda s: s["devices"]["pio:0x3f8"].pop("lcr")),
        "nested garbage in a list": changed(
            lambda s: s["devices"]["pio:0x3f8"].update(_rx=[{"x": [1]}])),
        "a bool for an int": changed(lambda s: s["board"]["pic"]["master"].update(irr=True)),
        "too deeply nested": b"\x84" + _pack("board") + deep + b"".join(
            map(_pack, ("devices", {}, "inputs", [], "isa_levels", 0))),
    }


def test_bad_device_state_is_refused_and_the_devices_stay_as_they_were():
    out = []
    hypervisor = MicroHypervisor(engine="trap", sink=out.append, timeout=60)
    try:
        partition = hypervisor.create_partition()
        original = partition.save_devices()
        good = {**msgpack.unpackb(original, raw=False, strict_map_key=False), "isa_levels": 0}
        partition.load_devices(_pack(good), 0)          # a valid blob is taken
        for what, blob in _bad_blobs(good).items():
            with pytest.raises(StateError, match="the parent partition refused"):
                partition.load_devices(blob, 0)
            assert hypervisor.parent.alive(), what
            assert partition.save_devices() == original, what
        result = partition.run(resolve("interrupts", DEFAULT_RAM))
        assert result.ok, result.report()
        assert b"".join(out).count(b"\n") > 5
    finally:
        hypervisor.close()


@pytest.mark.parametrize("old, new, ok", [
    ({"a": 1, "b": None}, {"a": 2, "b": 7}, True),
    ({"a": 1}, {"a": 1, "b": 2}, False),
    ({"a": [1, 2]}, {"a": []}, True),
    ({"a": []}, {"a": [b"x", None, 3]}, True),
    ({"a": []}, {"a": [[1]]}, False),
    ({"a": [{"x": 1}]}, {"a": [{"x": 2}, {"x": 3}]}, True),
    ({"a": [{"x": 1}]}, {"a": [{"y": 2}]}, False),
    ({"a": 1}, {"a": 1.5}, False),
    ({"a": False}, {"a": 0}, False),
    ({"a": None}, {"a": {"b": 1}}, False)])
def test_same_shape(old, new, ok):
    if ok:
        same_shape(old, new, "state")
    else:
        with pytest.raises(ValueError):
            same_shape(old, new, "state")
