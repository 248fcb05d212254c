"""Linking a structured case's body from pieces assembled once: the fuzzer's answer to the
assembler costing more than the four runs of a case.

A case body is a sequence of ops — each the op's three bookkeeping stores, its lines, the call
to the checkpoint — and a final ``jmp finish``. Machine code depends on the text and on two
numbers only: where it lies (absolute references to labels of its own, relative references to
the runtime's routines) and, for the stores, the op's index and the address of its end. So each
distinct unit — a line, the stores, the call, or a whole op that has labels of its own — is
assembled, by emu.asm like any guest, twice: at the body's address and again 0x01010101 bytes
further. Every 32-bit field that moved by +0x01010101 is an absolute reference into the unit,
every one that moved by -0x01010101 a relative reference out of it (the shift changes every byte
of such a field, so none hides in the comparison); the index and end are written over marker
values. A unit is then linked at any address by adding the move to those fields. A unit whose
two assemblies differ in any other way (length, an unexplained byte) is not linked: the whole
case is assembled the ordinary way instead. tests/e2e/test_fuzz.py checks that linking gives
the same bytes as the assembler.
"""
from __future__ import annotations

import struct
from typing import NamedTuple

from emu.asm import assemble

SHIFT = 0x01010101                # how far the second assembly lies from the first
CACHE_LIMIT = 50_000              # units kept; the cache is emptied when full


class Unit(NamedTuple):
    """One unit assembled at ``origin``: its bytes, where its markers are, its relocations."""
    origin: int
    code: bytes
    markers: dict[int, int]                     # marker value -> offset of its 32-bit field
    relocations: tuple[tuple[int, int], ...]    # (offset of a 32-bit field, +1 or -1)

    def at(self, address: int, **values: int) -> bytes:
        """The unit linked at ``address``, with ``values`` (index=, end=) in its markers."""
        code = bytearray(self.code)
        moved = address - self.origin
        for offset, sign in self.relocations:
            value = struct.unpack_from("<I", code, offset)[0]
            struct.pack_into("<I", code, offset, (value + sign * moved) & 0xFFFFFFFF)
        if set(values) != {MARKER_NAMES[m] for m in self.markers}:
            raise Unlinkable(f"the unit's markers are not {sorted(values)}")
        for marker, offset in self.markers.items():
            struct.pack_into("<I", code, offset, values[MARKER_NAMES[marker]])
        return bytes(code)


class Unlinkable(Exception):
    """The unit's two assemblies differ in more than its relocations."""


# An op with labels of its own is one unit; any other op is linked line by line between a head
# (its bookkeeping stores, the address of its end written into the end marker) and a tail.
HEAD = ("    mov dword [ss:CURRENT_OP], INDEX_MARKER",
        "    mov dword [ss:RECOVERY], END_MARKER",
        "    mov [ss:RECOVERY_ESP], esp")
TAIL = ("    call checkpoint",)
FINAL = ("    jmp finish",)
MARKERS = {"INDEX_MARKER": 0x5EED1D0F, "END_MARKER": 0x5EEDE0D0}
MARKER_NAMES = {0x5EED1D0F: "index", 0x5EEDE0D0: "end"}


def op_unit(op_lines: list[str]) -> tuple[str, ...]:
    """An op with its labels as one unit (fuzz/program.py names them op_N, op_N_end)."""
    return ("unit:", HEAD[0], "    mov dword [ss:RECOVERY], unit_end", HEAD[2],
            *(line if line.endswith(":") else f"    {line}" for line in op_lines),
            "unit_end:", *TAIL)


class Linker:
    """Units by their lines, assembled on first use against the runtime's symbols."""

    def __init__(self, header: list[str], origin: int):
        self.header = [*header, *(f"{name} equ {value:#x}" for name, value in MARKERS.items())]
        self.origin = origin
        self.units: dict[tuple[str, ...], Unit] = {}

    def unit(self, lines: tuple[str, ...]) -> Unit:
        unit = self.units.get(lines)
        if unit is None:
            if len(self.units) >= CACHE_LIMIT:
                self.units.clear()
            unit = self.units[lines] = self._make(lines)
        return unit

    def _assemble(self, lines, origin: int) -> bytes:
        return assemble("\n".join(["bits 32", f"org {origin:#x}", *self.header, *lines])
                        + "\n").code

    def _make(self, lines) -> Unit:
        first = self._assemble(lines, self.origin)
        second = self._assemble(lines, self.origin + SHIFT)
        if len(first) != len(second):
            raise Unlinkable("the unit's length depends on where it lies")
        relocations, offset = [], 0
        while offset < len(first):
            if first[offset] == second[offset]:
                offset += 1
                continue
            relocations.append((offset, field_move(first, second, offset)))
            offset += 4
        markers = {}
        for value in MARKERS.values():
            found = first.count(struct.pack("<I", value))
            if found > 1:
                raise Unlinkable("a marker value is not unique in the unit")
            if found:
                markers[value] = first.find(struct.pack("<I", value))
        return Unit(self.origin, first, markers, tuple(relocations))

    def link(self, ops_lines: list[tuple[str, ...]]) -> tuple[bytes, list[int]]:
        """The body at ``origin`` and where each op starts."""
        pieces, starts = [], []
        address = self.origin
        for index, lines in enumerate(ops_lines):
            starts.append(address)
            code = self._link_op(index, lines, address)
            pieces.append(code)
            address += len(code)
        pieces.append(self.unit(FINAL).at(address))
        return b"".join(pieces), starts

    def _link_op(self, index: int, lines: tuple[str, ...], address: int) -> bytes:
        if any(line.endswith(":") for line in lines):
            return self.unit(op_unit(list(lines))).at(address, index=index)
        head = self.unit(HEAD)
        parts, at = [], address + len(head.code)
        for line in lines:
            parts.append(self.unit((f"    {line}",)).at(at))
            at += len(parts[-1])
        return b"".join([head.at(address, index=index, end=at), *parts,
                         self.unit(TAIL).at(at)])


def field_move(first: bytes, second: bytes, offset: int) -> int:
    """+1 or -1: the 32-bit field at ``offset`` moved with the unit or against it."""
    if offset + 4 > len(first):
        raise Unlinkable("a difference too near the unit's end to be a 32-bit field")
    a, b = (struct.unpack_from("<I", code, offset)[0] for code in (first, second))
    for sign in (1, -1):
        if (a + sign * SHIFT) & 0xFFFFFFFF == b:
            return sign
    raise Unlinkable(f"the bytes at +{offset} changed by neither +{SHIFT:#x} nor -{SHIFT:#x}")
