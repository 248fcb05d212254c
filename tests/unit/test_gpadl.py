"""GrantedMemory (hypervisors/micro/parent/gpadl.py): only granted pages of the child's memfd are mapped,
and every refused grant or access is counted."""
from __future__ import annotations

import mmap
import os

import pytest

from hypervisors.micro.parent.gpadl import (
    MAX_GPADL_PAGES, PAGE_SIZE, GpadlRefused, GrantedMemory)

RAM_PAGES = 32


@pytest.fixture
def child():
    fd = os.memfd_create("test-child")
    os.ftruncate(fd, RAM_PAGES * PAGE_SIZE)
    ram = mmap.mmap(fd, RAM_PAGES * PAGE_SIZE)
    memory = GrantedMemory(fd, RAM_PAGES * PAGE_SIZE)
    yield ram, memory
    memory.close()
    ram.close()
    os.close(fd)


def test_a_view_reaches_exactly_the_granted_pages_in_grant_order(child):
    ram, memory = child
    ram[5 * PAGE_SIZE:5 * PAGE_SIZE + 4] = b"five"
    ram[3 * PAGE_SIZE - 2:3 * PAGE_SIZE] = b"ee"
    view = memory.create_gpadl(7, (5, 2))
    assert len(view) == 2 * PAGE_SIZE and view[0:4] == b"five"
    assert view[2 * PAGE_SIZE - 2:2 * PAGE_SIZE] == b"ee"          # page 2's last bytes
    view[PAGE_SIZE - 2:PAGE_SIZE + 2] = b"ABCD"                    # across the page seam
    assert ram[6 * PAGE_SIZE - 2:6 * PAGE_SIZE] == b"AB"
    assert ram[2 * PAGE_SIZE:2 * PAGE_SIZE + 2] == b"CD"


@pytest.mark.parametrize("key", [slice(0, 2 * PAGE_SIZE + 1), slice(-4, None), slice(None, 4),
                                 slice(8, 4)])
def test_views_refuse_anything_past_their_end(child, key):
    _, memory = child
    view = memory.create_gpadl(1, (3, 4))
    with pytest.raises(GpadlRefused, match="view_out_of_range"):
        view[key]
    window = view.window(PAGE_SIZE, PAGE_SIZE)
    with pytest.raises(GpadlRefused, match="view_out_of_range"):
        window[0:PAGE_SIZE + 1] = bytes(PAGE_SIZE + 1)


@pytest.mark.parametrize("handle, pfns, reason", [
    (1, (RAM_PAGES,), "pfn_outside_ram"),
    (2, (1, 2, 1), "duplicate_pfn"),
    (3, (), "bad_page_count"),
    (4, tuple(range(MAX_GPADL_PAGES + 1)), "bad_page_count"),
    (5, (9, 10), "overlapping_grant"),
    (9, (20,), "duplicate_handle"),
])
def test_refused_grants_are_counted_and_map_nothing(child, handle, pfns, reason):
    _, memory = child
    memory.create_gpadl(9, (10, 11))
    with pytest.raises(GpadlRefused) as error:
        memory.create_gpadl(handle, pfns)
    assert error.value.reason == reason
    assert memory.rejections == {reason: 1}
    assert list(memory.views) == [9]


def test_teardown_unmaps_and_frees_the_pages(child):
    _, memory = child
    memory.create_gpadl(1, (4,))
    memory.teardown(1)
    with pytest.raises(GpadlRefused, match="unknown_gpadl"):
        memory.view(1)
    memory.create_gpadl(2, (4,))


def test_ram_size_must_be_whole_pages():
    with pytest.raises(ValueError, match="not a positive number of pages"):
        GrantedMemory(0, 100)
