"""Where QEMU's CPU state lies is searched for once per Unicorn build and cached per user
(emu/layout_cache.py): a cached layout is used only after it verifies on the new instance, and a
missing, corrupt, wrong or unwritable cache costs a search, never a broken CPU."""
from __future__ import annotations

import ctypes
import json

import pytest

from emu import layout_cache, qemu_state
from emu.cpu import EAX, Cpu
from emu.memory import GuestMemory


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty per-test cache directory; the path of the cache file in it."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    return layout_cache.cache_path()


@pytest.fixture
def memory():
    ram = GuestMemory(1 << 20)
    yield ram
    ram.close()


def working(memory: GuestMemory) -> bool:
    """A CPU built now reads and writes registers through the state it located."""
    cpu = Cpu(memory)
    try:
        cpu.gpr[EAX] = 0x1234
        return cpu._uc.reg_read(qemu_state.X.UC_X86_REG_EAX) == 0x1234
    finally:
        cpu.close()


def searched(monkeypatch) -> list[int]:
    """Count the searches the next CPUs make."""
    calls = []
    search = qemu_state._search

    def counting(uc):
        calls.append(1)
        return search(uc)
    monkeypatch.setattr(qemu_state, "_search", counting)
    return calls


def cached_layout(path) -> dict:
    (entry,) = json.loads(path.read_text()).values()
    return entry


def test_the_first_cpu_searches_and_caches_and_later_ones_only_verify(cache, memory,
                                                                     monkeypatch):
    calls = searched(monkeypatch)
    assert working(memory) and calls == [1]
    assert set(cached_layout(cache)) == set(layout_cache.FIELDS)
    assert working(memory) and working(memory) and calls == [1]


@pytest.mark.parametrize("garbage", [b"\x00\xff not json", b"[1, 2]", b'{"k": 5}'])
def test_a_corrupt_cache_file_is_searched_past_and_rewritten(cache, memory, monkeypatch,
                                                             garbage):
    working(memory)
    good = cached_layout(cache)
    cache.write_bytes(garbage)
    calls = searched(monkeypatch)
    assert working(memory) and calls == [1]
    assert good in json.loads(cache.read_text()).values()


@pytest.mark.parametrize("field, change", [
    ("pointer", 8), ("env", 8), ("dr", 8), ("counter", 8), ("halted", -4),
    ("env", 1 << 40), ("pointer", 1 << 20), ("dr", -5000)])
def test_a_wrong_cached_layout_fails_verification_and_is_replaced(cache, memory, monkeypatch,
                                                                  field, change):
    working(memory)
    good = cached_layout(cache)
    key = next(iter(json.loads(cache.read_text())))
    cache.write_text(json.dumps({key: {**good, field: good[field] + change}}))
    calls = searched(monkeypatch)
    assert working(memory) and calls == [1]
    assert cached_layout(cache) == good


def test_an_unwritable_cache_only_costs_a_search(tmp_path, memory, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    calls = searched(monkeypatch)
    assert working(memory) and working(memory) and calls == [1, 1]


def test_reading_unmapped_memory_is_refused_without_a_fault():
    assert qemu_state._safe_read(8, 16) is None
    buffer = ctypes.create_string_buffer(b"live bytes", 16)
    assert qemu_state._safe_read(ctypes.addressof(buffer), 10) == b"live bytes"
