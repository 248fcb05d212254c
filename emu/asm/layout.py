"""Statements (data, reservations, alignment, instructions) and the layout passes over them:
passes repeat until every symbol keeps its value, then a final pass encodes, has capstone check
each instruction, and produces the Image with its listing."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from emu.asm.encode import _RELATIVE, _encode
from emu.asm.expressions import _Ctx, _Val, _eval, _int_bytes
from emu.asm.guard import _verify
from emu.asm.operands import _Prefixes, _Resolved, _resolve
from emu.asm.source import _Error, _located, _Src

MAX_PASSES = 40
STICKY_AFTER = 16  # after this many passes a jump that had to grow to near stays near


@dataclass(frozen=True)
class ListingLine:
    """The bytes one source line produced: `size` bytes at `address`, assembled as `bits`."""

    address: int
    size: int
    bits: int
    filename: str
    lineno: int
    text: str


@dataclass
class Image:
    """An assembled flat binary, loaded at `origin`.

    `symbols` holds every symbol with its value, `equ` constants included; `labels` only those
    whose value is an address (labels, and `equ` of an expression with one label term such as
    `here equ $`: NASM's relocatable values, the symbols its ELF output puts in a section, where
    it puts absolute `equ` constants in SHN_ABS). Local labels are qualified by their parent,
    as NASM names them: `.loop` after `start:` is `start.loop`."""

    code: bytes
    origin: int
    symbols: dict[str, int]
    labels: dict[str, int]
    listing: list[ListingLine]


class _Equ(NamedTuple):
    expr: tuple


class _Data:
    """db/dw/dd/dq: numbers, expressions and strings (padded to the unit)."""

    relative = False

    def __init__(self, unit: int, items: list) -> None:
        self.unit, self.items = unit, items

    def emit(self, ctx: _Ctx, address: int, key: tuple) -> bytes:
        out = bytearray()
        for item in self.items:
            if isinstance(item, bytes):
                out += item + bytes(-len(item) % self.unit)
            else:
                out += _int_bytes(_plain(_eval(item, ctx)), self.unit)
        return bytes(out)


class _Reserve:
    """resb/resw/resd/resq: zero bytes, as NASM's bin output writes them."""

    relative = False

    def __init__(self, unit: int, count: tuple) -> None:
        self.unit, self.count = unit, count

    def emit(self, ctx: _Ctx, address: int, key: tuple) -> bytes:
        count = _plain(_eval(self.count, ctx))
        if count < 0:
            raise _Error(f"negative reservation {count}")
        return bytes(count * self.unit)


class _Align:
    """align N[, db X]: pads to a multiple of N from the start ($$) with NOPs or X."""

    relative = False

    def __init__(self, boundary: tuple, fill: int) -> None:
        self.boundary, self.fill = boundary, fill

    def emit(self, ctx: _Ctx, address: int, key: tuple) -> bytes:
        boundary = _plain(_eval(self.boundary, ctx))
        if boundary <= 0 or boundary & (boundary - 1):
            raise _Error(f"alignment {boundary} is not a power of two")
        return bytes([self.fill]) * (-(ctx.here - ctx.origin) % boundary)


class _Insn:
    """One instruction: resolved per pass, encoded, and checked by capstone in the last pass."""

    def __init__(self, bits: int, pre: _Prefixes, mnemonic: str, specs: tuple, text: str) -> None:
        self.bits, self.pre, self.mnemonic, self.specs = bits, pre, mnemonic, specs
        self.text = text
        self.relative = mnemonic in _RELATIVE

    def emit(self, ctx: _Ctx, address: int, key: tuple) -> bytes:
        ops = tuple(_resolve(spec, ctx, self.bits) for spec in self.specs)
        ins = _Resolved(self.bits, self.mnemonic, self.pre, ops, address, key, self.text)
        code, who = _encode(ins, ctx)
        if ctx.final:
            _verify(ins, code, who)
        return code


def _plain(value: _Val) -> int:
    if value.regs:
        raise _Error("a register is not allowed here")
    return value.value


@dataclass
class _Stmt:
    src: _Src
    bits: int
    label: str | None = None
    times: tuple | None = None
    body: object = None


class _Layout:
    """Repeats passes until every symbol keeps its value, then runs the final (checked) pass."""

    def __init__(self, stmts: list[_Stmt], origin: int) -> None:
        self.stmts, self.origin = stmts, origin
        self.symbols: dict[str, _Val] = {}
        self.near: set = set()
        self.sticky = False

    def run(self) -> Image:
        for number in range(MAX_PASSES):
            self.sticky = number >= STICKY_AFTER
            symbols = self._pass(final=False)[1]
            if symbols == self.symbols:
                break
            self.symbols = symbols
        else:
            raise _located(self.stmts[0].src, _Error(f"no stable layout after {MAX_PASSES} passes"))
        code, symbols, listing = self._pass(final=True)
        return Image(code, self.origin, {k: v.value for k, v in symbols.items()},
                     {k: v.value for k, v in symbols.items() if v.reloc == 1}, listing)

    def _pass(self, final: bool) -> tuple[bytes, dict[str, _Val], list[ListingLine]]:
        ctx = _Ctx(self.origin, self.symbols, final, self.near, self.sticky)
        out, listing = bytearray(), []
        for index, stmt in enumerate(self.stmts):
            address = self.origin + len(out)
            try:
                chunk = self._statement(stmt, index, ctx, address)
            except _Error as err:
                if final:
                    raise _located(stmt.src, err) from None
                continue
            out += chunk
            if final and chunk:
                listing.append(ListingLine(address, len(chunk), stmt.bits, stmt.src.filename,
                                           stmt.src.lineno, stmt.src.text.strip()))
        return bytes(out), ctx.symbols, listing

    def _statement(self, stmt: _Stmt, index: int, ctx: _Ctx, address: int) -> bytes:
        ctx.here = address
        if isinstance(stmt.body, _Equ):
            ctx.define(stmt.label, _eval(stmt.body.expr, ctx))
            return b""
        if stmt.label:
            ctx.define(stmt.label, _Val(address, 1))
        if stmt.body is None:
            return b""
        count = 1 if stmt.times is None else _plain(_eval(stmt.times, ctx))
        if count < 0:
            raise _Error(f"times count {count} is negative")
        if not stmt.body.relative:
            return stmt.body.emit(ctx, address, (index, 0)) * count
        out = bytearray()
        for rep in range(count):
            out += stmt.body.emit(ctx, address + len(out), (index, rep))
        return bytes(out)
