"""NASM expressions: register and size names, a precedence-climbing parser, and evaluation
to values that carry label (relocatable) and register terms, against the symbols of one
layout pass."""

from __future__ import annotations

from typing import NamedTuple, Protocol

from emu.asm.source import _Cursor, _Error, _number, _string_bytes

_GPRS = {**dict.fromkeys("al cl dl bl ah ch dh bh".split(), 1),
         **dict.fromkeys("ax cx dx bx sp bp si di".split(), 2),
         **dict.fromkeys("eax ecx edx ebx esp ebp esi edi".split(), 4)}
_SREGS = {"es": 0x26, "cs": 0x2E, "ss": 0x36, "ds": 0x3E, "fs": 0x64, "gs": 0x65}
_CONTROL_REGS = {f"cr{n}" for n in (0, 2, 3, 4)} | {f"dr{n}" for n in range(8)}
_VECTOR_REGS = {f"{kind}{n}" for kind in ("mm", "xmm") for n in range(8)}
_REGISTERS = set(_GPRS) | set(_SREGS) | _CONTROL_REGS | _VECTOR_REGS
_SIZE_BYTES = {"byte": 1, "word": 2, "dword": 4, "fword": 6, "qword": 8, "tword": 10}
_PTR = {"byte": "byte", "word": "word", "dword": "dword", "fword": "fword", "qword": "qword",
        "tword": "tbyte"}
_MODIFIERS = {"short", "near", "far", "strict"}
_BINARY_LEVELS = (("|",), ("^",), ("&",), ("<<", ">>"), ("+", "-"),
                  ("*", "/", "//", "%", "%%"))
_PRECEDENCE = {op: level for level, ops in enumerate(_BINARY_LEVELS) for op in ops}
_MASK64 = (1 << 64) - 1


class _Scope(Protocol):
    """Whoever parses an expression names its symbols (the parser qualifies .local labels)."""

    def qualify(self, name: str) -> str: ...


class _Val(NamedTuple):
    """An expression value: `reloc` counts label terms (NASM's relocatable values), `regs` holds
    (register, coefficient) terms of an effective address, `known` is False for forward guesses."""

    value: int
    reloc: int = 0
    regs: tuple[tuple[str, int], ...] = ()
    known: bool = True


def _parse_expr(cur: _Cursor, scope: _Scope, min_level: int = 0) -> tuple:
    """Precedence climbing over NASM's binary operators."""
    node = _parse_unary(cur, scope)
    while True:
        kind, op = cur.peek()
        level = _PRECEDENCE.get(op, -1) if kind == "op" else -1
        if level < min_level:
            return node
        cur.next()
        node = ("b", op, node, _parse_expr(cur, scope, level + 1))


def _parse_unary(cur: _Cursor, scope: _Scope) -> tuple:
    if cur.peek() in (("op", "-"), ("op", "+"), ("op", "~"), ("op", "!")):
        return ("u", cur.next()[1], _parse_unary(cur, scope))
    return _parse_primary(cur, scope)


def _parse_primary(cur: _Cursor, scope: _Scope) -> tuple:
    kind, text = cur.next()
    if kind == "num":
        return ("n", _number(text))
    if kind == "str":
        data = _string_bytes(text)
        if len(data) > 8:
            raise _Error(f"character constant {text} is longer than 8 bytes")
        return ("n", int.from_bytes(data, "little"))
    if kind == "id":
        return _parse_name(text, scope)
    if (kind, text) == ("op", "("):
        node = _parse_expr(cur, scope)
        if not cur.accept(")"):
            raise _Error("missing ')'")
        return node
    if kind == "op" and text in ("$", "$$"):
        return (text,)
    raise _Error(f"expected an expression, found '{text}'" if text else "missing expression")


def _parse_name(text: str, scope: _Scope) -> tuple:
    low = text.lower()
    if low in _REGISTERS:
        return ("r", low)
    if low in _SIZE_BYTES or low in _MODIFIERS:
        raise _Error(f"unexpected '{text}' in an expression")
    return ("s", scope.qualify(text))


def _eval(node: tuple, ctx: "_Ctx") -> _Val:
    tag = node[0]
    if tag == "n":
        return _Val(node[1])
    if tag == "s":
        return ctx.lookup(node[1])
    if tag == "r":
        return _Val(0, 0, ((node[1], 1),))
    if tag == "$":
        return _Val(ctx.here, 1)
    if tag == "$$":
        return _Val(ctx.origin, 1)
    if tag == "u":
        return _unary(node[1], _eval(node[2], ctx))
    return _binary(node[1], _eval(node[2], ctx), _eval(node[3], ctx))


def _unary(op: str, a: _Val) -> _Val:
    if op == "-":
        return _Val(-a.value, -a.reloc, tuple((r, -c) for r, c in a.regs), a.known)
    if a.regs and op != "+":
        raise _Error("invalid use of a register in an expression")
    value = {"+": a.value, "~": ~a.value, "!": int(a.value == 0)}[op]
    return _Val(value, a.reloc if op == "+" else 0, a.regs, a.known)


def _add_regs(a: tuple, b: tuple, sign: int) -> tuple:
    terms = dict(a)
    for reg, coef in b:
        terms[reg] = terms.get(reg, 0) + sign * coef
    return tuple((reg, coef) for reg, coef in terms.items() if coef)


def _binary(op: str, a: _Val, b: _Val) -> _Val:
    known = a.known and b.known
    if op in "+-":
        sign = 1 if op == "+" else -1
        return _Val(a.value + sign * b.value, a.reloc + sign * b.reloc,
                    _add_regs(a.regs, b.regs, sign), known)
    if op == "*" and bool(a.regs) != bool(b.regs):
        scaled, factor = (a, b.value) if a.regs else (b, a.value)
        return _Val(scaled.value * factor, 0, tuple((r, c * factor) for r, c in scaled.regs),
                    known)
    if a.regs or b.regs:
        raise _Error("invalid use of a register in an expression")
    if op in ("/", "//", "%", "%%") and b.value == 0:
        if known:
            raise _Error("division by zero")
        return _Val(0, 0, (), False)
    return _Val(_arith(op, a.value, b.value), int(bool(a.reloc or b.reloc)), (), known)


def _arith(op: str, x: int, y: int) -> int:
    if op in ("/", "%"):  # NASM: unsigned 64-bit
        x, y = x & _MASK64, y & _MASK64
        result = x // y if op == "/" else x % y
    elif op in ("//", "%%"):  # NASM: signed, truncating toward zero
        quotient = abs(x) // abs(y) * (1 if (x < 0) == (y < 0) else -1)
        result = quotient if op == "//" else x - quotient * y
    else:
        result = {"|": x | y, "^": x ^ y, "&": x & y, "*": x * y, "<<": x << (y & 63),
                  ">>": (x & _MASK64) >> (y & 63)}[op]
    result &= _MASK64
    return result - (1 << 64) if result >> 63 else result


class _Ctx:
    """Symbol values and the current position during one pass."""

    def __init__(self, origin: int, previous: dict[str, _Val], final: bool,
                 near: set, sticky: bool) -> None:
        self.origin, self.previous, self.final = origin, previous, final
        self.near, self.sticky = near, sticky
        self.symbols: dict[str, _Val] = {}
        self.here = origin

    def define(self, name: str, value: _Val) -> None:
        if name in self.symbols:
            raise _Error(f"symbol '{name}' is already defined")
        if value.regs:
            raise _Error(f"'{name}' cannot be defined as a register expression")
        self.symbols[name] = _Val(value.value, value.reloc)

    def lookup(self, name: str) -> _Val:
        value = self.symbols.get(name) or self.previous.get(name)
        if value is not None:
            return value
        if self.final:
            raise _Error(f"undefined symbol '{name}'")
        return _Val(0, 0, (), False)


def _constant(node: tuple, what: str) -> int:
    value = _eval(node, _Ctx(0, {}, True, set(), True))
    if value.reloc or value.regs:
        raise _Error(f"{what} needs a constant")
    return value.value


def _int_bytes(value: int, width: int) -> bytes:
    bits = 8 * width
    if not -(1 << (bits - 1)) <= value < (1 << bits):
        raise _Error(f"value {value:#x} does not fit in {width} byte(s)")
    return (value & ((1 << bits) - 1)).to_bytes(width, "little")


def _signed(value: int, width: int) -> int:
    value &= (1 << (8 * width)) - 1
    return value - (1 << (8 * width)) if value >> (8 * width - 1) else value
