"""Guest RAM in a snapshot, and dirty tracking by page hashes.

A full snapshot keeps every page that is not all zeros (a fresh VM's RAM is zeros, so a restore
into one needs nothing else). A diff snapshot keeps the pages written since the snapshot it is
based on: ``PageHashes`` remembers a BLAKE2b digest of every page at the last snapshot, and a
page is dirty when its digest changed. Hashing reads all of RAM (cheap next to writing it out;
the figures are in `trapvisor bench --only vms`) and needs no write protection or hook, so the
guest runs at full speed between snapshots.

The section is ``u32 count | count x u32 page numbers | count x 4096 bytes``.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import struct
from array import array

PAGE = 0x1000
ZERO_PAGE = bytes(PAGE)
CHUNK = 1 << 20
ZERO_CHUNK = bytes(CHUNK)
_memcmp = ctypes.CDLL(ctypes.util.find_library("c")).memcmp
_memcmp.argtypes = (ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t)
DIGEST = 8


def _digest(page) -> bytes:
    return hashlib.blake2b(page, digest_size=DIGEST).digest()


class PageHashes:
    """The digest of every guest page at the last snapshot."""

    def __init__(self, memory):
        view = memory.view
        self.digests = [_digest(view[at:at + PAGE]) for at in range(0, memory.size, PAGE)]

    def dirty(self, memory) -> list[int]:
        """The pages whose contents changed since these digests were taken; the digests move
        on to the present contents."""
        view, digests, found = memory.view, self.digests, []
        for number in range(len(digests)):
            digest = _digest(view[number * PAGE:(number + 1) * PAGE])
            if digest != digests[number]:
                digests[number] = digest
                found.append(number)
        return found


def nonzero_pages(memory) -> list[int]:
    """The pages holding anything but zeros, looked at 1 MiB at a time, then page by page, with
    libc's memcmp on guest RAM in place (a memoryview compares item by item, ~100x slower, and
    slicing the mmap copies)."""
    found = []
    for chunk in range(0, memory.size, CHUNK):
        end = min(chunk + CHUNK, memory.size)
        if _memcmp(memory.address + chunk, ZERO_CHUNK, end - chunk):
            found += [n for n in range(chunk // PAGE, end // PAGE)
                      if _memcmp(memory.address + n * PAGE, ZERO_CHUNK, PAGE)]
    return found


def encode(memory, pages: list[int]) -> bytes:
    view = memory.view
    return b"".join([struct.pack("<I", len(pages)), array("I", pages).tobytes(),
                     *(view[n * PAGE:(n + 1) * PAGE] for n in pages)])


def apply(memory, blob: bytes) -> int:
    """Write the section's pages into guest RAM; return how many there were."""
    count = struct.unpack_from("<I", blob)[0] if len(blob) >= 4 else -1
    if len(blob) != 4 + count * (4 + PAGE):
        raise ValueError(f"the RAM section's length does not match its {count} pages")
    pages = array("I")
    pages.frombytes(blob[4:4 + 4 * count])
    base = 4 + 4 * count
    view = memory.view
    limit = memory.size // PAGE
    for index, number in enumerate(pages):
        if number >= limit:
            raise ValueError(f"the RAM section holds page {number:#x}, beyond this VM's "
                             f"{memory.size >> 20} MiB")
        view[number * PAGE:(number + 1) * PAGE] = blob[base + index * PAGE:base + (index + 1) * PAGE]
    return count
