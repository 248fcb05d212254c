"""The parent partition's only window on a child's RAM: Guest Physical Address Descriptor Lists
(GPADLs, Linux drivers/hv/channel.c ``vmbus_establish_gpadl``) mapped page by page.

``GrantedMemory(fd, size)`` holds the child's memfd but maps nothing until a GPADL grants pages;
it then ``mmap``s exactly those pages (at their page offsets in the fd) and serves reads and
writes through a ``GpadlView`` that refuses any access past its end. Everything it refuses
(PFNs outside RAM, duplicate PFNs, pages already granted to another handle, duplicate handles,
too many pages) is counted in ``rejections`` and logged.
"""
from __future__ import annotations

import logging
import mmap
from collections import Counter

PAGE_SIZE = 4096
MAX_GPADL_PAGES = 64          # one GPADL: a ring pair of up to 32 pages per direction
MAX_GRANTED_PAGES = 512       # all of one child's live grants (2 MiB)
MAX_GPADLS = 32

log = logging.getLogger(__name__)


class GpadlRefused(ValueError):
    """A grant or an access the parent will not make; ``reason`` is a counter key."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


class GpadlView:
    """The granted pages of one GPADL, seen as one contiguous buffer (``len`` and slice get/set,
    like a bytearray). Page boundaries are handled here; nothing outside the pages is reachable."""

    def __init__(self, handle: int, pfns: tuple[int, ...], pages: list[mmap.mmap]):
        self.handle = handle
        self.pfns = pfns
        self._pages = pages

    def __len__(self) -> int:
        return len(self._pages) * PAGE_SIZE

    def _span(self, key: slice) -> tuple[int, int]:
        start, stop, step = key.indices(len(self))
        if step != 1 or key.start is None or key.stop is None or not (
                0 <= key.start <= key.stop <= len(self)):
            raise GpadlRefused("view_out_of_range",
                               f"[{key.start}:{key.stop}] outside GPADL {self.handle:#x} "
                               f"of {len(self)} bytes")
        return start, stop

    def _pieces(self, start: int, stop: int):
        while start < stop:
            page, offset = divmod(start, PAGE_SIZE)
            length = min(stop - start, PAGE_SIZE - offset)
            yield self._pages[page], offset, length
            start += length

    def __getitem__(self, key: slice) -> bytes:
        start, stop = self._span(key)
        return b"".join(page[offset:offset + n] for page, offset, n in self._pieces(start, stop))

    def __setitem__(self, key: slice, data: bytes) -> None:
        start, stop = self._span(key)
        if len(data) != stop - start:
            raise GpadlRefused("view_size_mismatch", f"{len(data)} bytes into {stop - start}")
        done = 0
        for page, offset, n in self._pieces(start, stop):
            page[offset:offset + n] = data[done:done + n]
            done += n

    def window(self, start: int, length: int) -> "Window":
        self._span(slice(start, start + length))
        return Window(self, start, length)

    def unmap(self) -> None:
        for page in self._pages:
            page.close()


class Window:
    """A bounded sub-range of a view (one ring of a ring pair), with the same buffer interface."""

    def __init__(self, view: GpadlView, start: int, length: int):
        self.view, self.start, self.length = view, start, length

    def __len__(self) -> int:
        return self.length

    def _shift(self, key: slice) -> slice:
        if key.start is None or key.stop is None or not 0 <= key.start <= key.stop <= self.length:
            raise GpadlRefused("view_out_of_range",
                               f"[{key.start}:{key.stop}] outside a {self.length}-byte window")
        return slice(self.start + key.start, self.start + key.stop)

    def __getitem__(self, key: slice) -> bytes:
        return self.view[self._shift(key)]

    def __setitem__(self, key: slice, data: bytes) -> None:
        self.view[self._shift(key)] = data


class GrantedMemory:
    """One child's RAM (``size`` bytes of the memfd ``fd``), reachable only through GPADLs."""

    def __init__(self, fd: int, size: int):
        if size <= 0 or size % PAGE_SIZE:
            raise ValueError(f"child RAM size {size} is not a positive number of pages")
        self.fd = fd
        self.size = size
        self.views: dict[int, GpadlView] = {}
        self.rejections: Counter[str] = Counter()

    @property
    def granted_pages(self) -> int:
        return sum(len(view.pfns) for view in self.views.values())

    def _refuse(self, reason: str, detail: str) -> GpadlRefused:
        self.rejections[reason] += 1
        log.warning("GPADL refused (%s): %s", reason, detail)
        return GpadlRefused(reason, detail)

    def _check(self, handle: int, pfns: tuple[int, ...]) -> None:
        ram_pages = self.size // PAGE_SIZE
        granted = {pfn for view in self.views.values() for pfn in view.pfns}
        checks = (
            (handle in self.views, "duplicate_handle", f"handle {handle:#x} already exists"),
            (len(self.views) >= MAX_GPADLS, "too_many_gpadls", f"{MAX_GPADLS} are live"),
            (not pfns or len(pfns) > MAX_GPADL_PAGES, "bad_page_count",
             f"{len(pfns)} pages (1..{MAX_GPADL_PAGES} allowed)"),
            (self.granted_pages + len(pfns) > MAX_GRANTED_PAGES, "too_many_pages",
             f"{self.granted_pages} + {len(pfns)} pages > {MAX_GRANTED_PAGES}"),
            (any(not 0 <= pfn < ram_pages for pfn in pfns), "pfn_outside_ram",
             f"PFNs {[hex(p) for p in pfns if not 0 <= p < ram_pages][:4]} >= {ram_pages:#x}"),
            (len(set(pfns)) != len(pfns), "duplicate_pfn", "a page is listed twice"),
            (not granted.isdisjoint(pfns), "overlapping_grant",
             f"PFNs {sorted(granted & set(pfns))[:4]} are granted to another handle"))
        for failed, reason, detail in checks:
            if failed:
                raise self._refuse(reason, f"GPADL {handle:#x}: {detail}")

    def create_gpadl(self, handle: int, pfns: tuple[int, ...]) -> GpadlView:
        """Map exactly ``pfns`` of the child's RAM under ``handle``."""
        self._check(handle, pfns)
        pages = [mmap.mmap(self.fd, PAGE_SIZE, mmap.MAP_SHARED,
                           mmap.PROT_READ | mmap.PROT_WRITE, offset=pfn * PAGE_SIZE)
                 for pfn in pfns]
        view = self.views[handle] = GpadlView(handle, tuple(pfns), pages)
        return view

    def view(self, handle: int) -> GpadlView:
        view = self.views.get(handle)
        if view is None:
            raise self._refuse("unknown_gpadl", f"no GPADL {handle:#x}")
        return view

    def teardown(self, handle: int) -> None:
        self.view(handle).unmap()
        del self.views[handle]

    def close(self) -> None:
        for handle in list(self.views):
            self.teardown(handle)
