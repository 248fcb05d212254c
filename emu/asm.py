"""NASM-compatible assembler for trapvisor's guest kernels, built over keystone 0.9.2.

It lays out the NASM subset the guests use over passes until addresses converge, encodes by hand
what keystone gets wrong (notes/unicorn-x86.md section 8) and the rest with keystone, and accepts
an encoding only after capstone decodes it back to the instruction that was written.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Sequence

import keystone

from emu.disasm import LEGACY_PREFIXES, Disassembler, Insn

MAX_PASSES = 40
STICKY_AFTER = 16  # after this many passes a jump that had to grow to near stays near
_MAX_EXPANSIONS = 32
_IMM_MARK = 0x5A3C  # placeholders that force keystone to use full-width immediate/displacement
_DISP_MARK = 0x4B2D


class AsmError(Exception):
    """An assembly error located at a source line."""

    def __init__(self, filename: str, lineno: int, line: str, message: str) -> None:
        self.filename, self.lineno, self.line, self.message = filename, lineno, line, message
        super().__init__(str(self))

    def __str__(self) -> str:
        return f"{self.filename}:{self.lineno}: error: {self.message}\n    {self.line}"


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
    """An assembled flat binary, loaded at `origin`."""

    code: bytes
    origin: int
    symbols: dict[str, int]
    listing: list[ListingLine]


class _Error(Exception):
    """An error without a location; whoever catches it knows the source line."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class _Src(NamedTuple):
    filename: str
    lineno: int
    text: str


def _located(src: _Src, err: _Error) -> AsmError:
    return AsmError(src.filename, src.lineno, src.text.strip(), err.message)


# ---------------------------------------------------------------------------- preprocessor

_STRING = r"'[^']*'|\"[^\"]*\"|`(?:\\.|[^`\\])*`"
_IDENT = r"[A-Za-z_.?@][\w.$#@~?]*"
_CODE_PART = re.compile(rf"(?:{_STRING}|[^;'\"`])*")
_STRING_OR_NAME = re.compile(rf"({_STRING})|(?<![\w.$#@~?])({_IDENT})")


def _strip_comment(text: str) -> str:
    code = _CODE_PART.match(text).group(0)
    if len(code) < len(text) and text[len(code)] != ";":
        raise _Error("unterminated string")
    return code.strip()


def _expand(code: str, defines: dict[str, str]) -> str:
    def substitute(match: re.Match) -> str:
        return match.group(1) or defines.get(match.group(2), match.group(2))

    for _ in range(_MAX_EXPANSIONS):
        expanded = _STRING_OR_NAME.sub(substitute, code) if defines else code
        if expanded == code:
            return code
        code = expanded
    raise _Error("%define expansion does not terminate")


class _Preprocessor:
    """Expands %include and %define; collects (source position, code without comment) pairs."""

    def __init__(self, include_dirs: Sequence[str | Path]) -> None:
        self.include_dirs = [Path(d) for d in include_dirs]
        self.defines: dict[str, str] = {}
        self.lines: list[tuple[_Src, str]] = []

    def feed(self, text: str, filename: str, stack: tuple[str, ...]) -> None:
        for lineno, raw in enumerate(text.splitlines(), 1):
            src = _Src(filename, lineno, raw)
            try:
                self._line(src, stack)
            except _Error as err:
                raise _located(src, err) from None

    def _line(self, src: _Src, stack: tuple[str, ...]) -> None:
        code = _strip_comment(src.text)
        if code.startswith("%"):
            self._directive(src, code, stack)
        elif code:
            self.lines.append((src, _expand(code, self.defines)))

    def _directive(self, src: _Src, code: str, stack: tuple[str, ...]) -> None:
        name, rest = re.match(r"(\S+)\s*(.*)$", code).groups()
        name = name.lower()
        if name == "%include":
            self._include(src, rest, stack)
        elif name == "%define":
            match = re.match(rf"({_IDENT})(\(?)\s*(.*)$", rest)
            if not match or match.group(2):
                raise _Error("expected '%define NAME text' (macro parameters are not supported)")
            self.defines[match.group(1)] = match.group(3)
        elif name == "%undef":
            self.defines.pop(rest, None)
        else:
            raise _Error(f"unsupported preprocessor directive '{name}'")

    def _include(self, src: _Src, arg: str, stack: tuple[str, ...]) -> None:
        match = re.fullmatch(r"\"([^\"]+)\"|'([^']+)'|<([^>]+)>", arg)
        if not match:
            raise _Error("%include expects a quoted file name")
        name = next(group for group in match.groups() if group)
        path = self._find(name, src.filename)
        key = str(path.resolve())
        if key in stack:
            raise _Error(f"include cycle: {' -> '.join(stack + (key,))}")
        try:
            text = path.read_text()
        except OSError as err:
            raise _Error(f"cannot read include file '{name}': {err.strerror}") from None
        self.feed(text, str(path), stack + (key,))

    def _find(self, name: str, including: str) -> Path:
        own_dir = [] if including.startswith("<") else [Path(including).parent]
        for directory in own_dir + self.include_dirs:
            if (directory / name).is_file():
                return directory / name
        raise _Error(f"include file '{name}' not found")


# ---------------------------------------------------------------------------- lexer

_TOKEN = re.compile(rf"\s*(?:(?P<num>[0-9]\w*)|(?P<str>{_STRING})|(?P<id>{_IDENT})"
                    r"|(?P<op><<|>>|//|%%|\$\$|[-+*/%&|^~()\[\],:$!]))")
_ESCAPE = re.compile(rb"\\(x[0-9a-fA-F]{1,2}|[0-7]{1,3}|.)", re.DOTALL)
_ESCAPES = {b"n": b"\n", b"r": b"\r", b"t": b"\t", b"a": b"\a", b"b": b"\b", b"e": b"\x1b",
            b"f": b"\f", b"v": b"\v", b"\\": b"\\", b"'": b"'", b'"': b'"', b"`": b"`",
            b"?": b"?"}


def _tokenize(code: str) -> list[tuple[str, str]]:
    tokens, pos = [], 0
    while pos < len(code):
        match = _TOKEN.match(code, pos)
        if not match:
            raise _Error(f"unexpected character {code[pos:].lstrip()[:1]!r}")
        tokens.append((match.lastgroup, match.group(match.lastgroup)))
        pos = match.end()
    return tokens


def _unescape(match: re.Match) -> bytes:
    code = match.group(1)
    if code[:1] == b"x":
        return bytes([int(code[1:], 16)])
    if code[:1] in b"01234567":
        return bytes([int(code, 8) & 0xFF])
    return _ESCAPES.get(code, b"\\" + code)


def _string_bytes(token: str) -> bytes:
    """A '...' or "..." string verbatim (UTF-8); a `...` string with C-style escapes."""
    body = token[1:-1].encode("utf-8")
    return _ESCAPE.sub(_unescape, body) if token[0] == "`" else body


def _number(text: str) -> int:
    digits = text.lower().replace("_", "")
    forms = ((("0x", "0h"), None, 16), ((), "h", 16), (("0b", "0y"), None, 2),
             (("0o", "0q"), None, 8), (("0d", "0t"), None, 10), ((), "b", 2), ((), "y", 2),
             ((), "o", 8), ((), "q", 8), ((), "d", 10), ((), "t", 10))
    for prefixes, suffix, base in forms:
        if prefixes and digits.startswith(prefixes):
            return _parse_int(digits[2:], base, text)
        if suffix and digits.endswith(suffix):
            return _parse_int(digits[:-1], base, text)
    return _parse_int(digits, 10, text)


def _parse_int(digits: str, base: int, text: str) -> int:
    try:
        return int(digits, base)
    except ValueError:
        raise _Error(f"invalid number '{text}'") from None


class _Cursor:
    """A position in one line's tokens."""

    def __init__(self, tokens: list[tuple[str, str]]) -> None:
        self.tokens, self.pos = tokens, 0

    def peek(self, offset: int = 0) -> tuple[str, str]:
        index = self.pos + offset
        return self.tokens[index] if index < len(self.tokens) else ("end", "")

    def next(self) -> tuple[str, str]:
        token = self.peek()
        self.pos += 1
        return token

    def word(self, offset: int = 0) -> str:
        kind, text = self.peek(offset)
        return text.lower() if kind == "id" else ""

    def accept(self, op: str) -> bool:
        if self.peek() == ("op", op):
            self.pos += 1
            return True
        return False

    def expect_end(self) -> None:
        if self.pos < len(self.tokens):
            raise _Error(f"unexpected '{self.peek()[1]}'")

    def done(self) -> bool:
        return self.pos >= len(self.tokens)

    def rest(self) -> list[tuple[str, str]]:
        rest, self.pos = self.tokens[self.pos:], len(self.tokens)
        return rest


# ---------------------------------------------------------------------------- expressions

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


class _Val(NamedTuple):
    """An expression value: `reloc` counts label terms (NASM's relocatable values), `regs` holds
    (register, coefficient) terms of an effective address, `known` is False for forward guesses."""

    value: int
    reloc: int = 0
    regs: tuple[tuple[str, int], ...] = ()
    known: bool = True


def _parse_expr(cur: _Cursor, scope: "_Parser", min_level: int = 0) -> tuple:
    """Precedence climbing over NASM's binary operators."""
    node = _parse_unary(cur, scope)
    while True:
        kind, op = cur.peek()
        level = _PRECEDENCE.get(op, -1) if kind == "op" else -1
        if level < min_level:
            return node
        cur.next()
        node = ("b", op, node, _parse_expr(cur, scope, level + 1))


def _parse_unary(cur: _Cursor, scope: "_Parser") -> tuple:
    if cur.peek() in (("op", "-"), ("op", "+"), ("op", "~"), ("op", "!")):
        return ("u", cur.next()[1], _parse_unary(cur, scope))
    return _parse_primary(cur, scope)


def _parse_primary(cur: _Cursor, scope: "_Parser") -> tuple:
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


def _parse_name(text: str, scope: "_Parser") -> tuple:
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


# ---------------------------------------------------------------------------- operands

class _OpSpec(NamedTuple):
    """A parsed operand: form is 'expr', 'mem' (seg = override name) or 'far' (seg = selector)."""

    form: str
    kw: str | None
    mods: frozenset[str]
    expr: tuple
    seg: object


class _Reg(NamedTuple):
    name: str
    width: int
    kind: str  # 'gpr' | 'sreg' | 'other'


class _Imm(NamedTuple):
    value: int
    reloc: bool
    known: bool
    kw: str | None
    mods: frozenset[str]


class _Mem(NamedTuple):
    seg: str | None
    base: str | None
    index: str | None
    scale: int
    disp: int
    reloc: bool
    asize: int
    kw: str | None
    mods: frozenset[str]


class _Far(NamedTuple):
    sel: int
    off: int
    kw: str | None


def _resolve(spec: _OpSpec, ctx: _Ctx, bits: int) -> _Reg | _Imm | _Mem | _Far:
    if spec.form == "far":
        return _resolve_far(spec, ctx)
    value = _eval(spec.expr, ctx)
    if spec.form == "mem":
        return _resolve_mem(spec, value, bits)
    if value.regs:
        return _resolve_reg(value)
    return _Imm(value.value, bool(value.reloc), value.known, spec.kw, spec.mods)


def _resolve_reg(value: _Val) -> _Reg:
    if len(value.regs) != 1 or value.regs[0][1] != 1 or value.value or value.reloc:
        raise _Error("invalid use of a register in an expression")
    name = value.regs[0][0]
    if name in _GPRS:
        return _Reg(name, _GPRS[name], "gpr")
    return _Reg(name, 2 if name in _SREGS else 4, "sreg" if name in _SREGS else "other")


def _resolve_far(spec: _OpSpec, ctx: _Ctx) -> _Far:
    sel, off = _eval(spec.seg, ctx), _eval(spec.expr, ctx)
    if sel.regs or off.regs:
        raise _Error("a far pointer is selector:offset with constant parts")
    if not 0 <= sel.value <= 0xFFFF and sel.known:
        raise _Error(f"segment selector {sel.value:#x} does not fit in 16 bits")
    return _Far(sel.value & 0xFFFF, off.value, spec.kw)


def _resolve_mem(spec: _OpSpec, value: _Val, bits: int) -> _Mem:
    base, index, scale = _effective_address(value.regs)
    asize = _address_size(base, index, bits)
    if asize == 16 and index in ("bx", "bp"):
        base, index = index, base
    limit = 1 << asize
    if not -(limit >> 1) <= value.value < limit:
        raise _Error(f"displacement {value.value:#x} does not fit {asize}-bit addressing")
    disp = _signed(value.value, asize // 8) if base or index else value.value & (limit - 1)
    return _Mem(spec.seg, base, index, scale, disp, bool(value.reloc), asize, spec.kw, spec.mods)


def _effective_address(regs: tuple) -> tuple[str | None, str | None, int]:
    """NASM's rules: first scale-1 register is the base; reg*2/3/5/9 split into base+index."""
    if not regs:
        return None, None, 1
    if len(regs) == 1:
        reg, coef = regs[0]
        if coef in (1, 2, 3, 5, 9):
            return (reg, None, 1) if coef == 1 else _no_esp_index(reg, reg, coef - 1)
        if coef in (4, 8):
            return None, reg, coef
    elif len(regs) == 2:
        (first, c1), (second, c2) = regs
        if c1 == 1 and c2 in (1, 2, 4, 8):
            return _no_esp_index(first, second, c2)
        if c2 == 1 and c1 in (2, 4, 8):
            return _no_esp_index(second, first, c1)
    raise _Error("invalid effective address")


def _no_esp_index(base: str, index: str, scale: int) -> tuple[str, str, int]:
    if index == "esp":
        if scale != 1 or base == "esp":
            raise _Error("esp cannot be an index register")
        return index, base, 1
    return base, index, scale


def _address_size(base: str | None, index: str | None, bits: int) -> int:
    regs = [reg for reg in (base, index) if reg]
    widths = {_GPRS.get(reg) for reg in regs}
    if not regs:
        return bits
    if widths == {4}:
        return 32
    bases, indexes = {"bx", "bp"} & set(regs), {"si", "di"} & set(regs)
    if widths == {2} and len(bases) + len(indexes) == len(regs) and max(len(bases),
                                                                         len(indexes)) == 1:
        return 16
    raise _Error("invalid effective address")


# ---------------------------------------------------------------------------- statements

class _Prefixes(NamedTuple):
    lock: bool = False
    rep: int | None = None
    seg: str | None = None
    osize: int | None = None
    asize: int | None = None


_PREFIX_WORDS = {"lock": ("lock", True), "rep": ("rep", 0xF3), "repe": ("rep", 0xF3),
                 "repz": ("rep", 0xF3), "repne": ("rep", 0xF2), "repnz": ("rep", 0xF2),
                 "o16": ("osize", 16), "o32": ("osize", 32), "a16": ("asize", 16),
                 "a32": ("asize", 32), **{seg: ("seg", seg) for seg in _SREGS}}
_DATA_UNITS = {"db": 1, "dw": 2, "dd": 4, "dq": 8}
_RES_UNITS = {"resb": 1, "resw": 2, "resd": 4, "resq": 8}
_LABEL_FOLLOWERS = {"equ", "times", "align", *_DATA_UNITS, *_RES_UNITS}
_UNSUPPORTED = {"global", "extern", "common", "cpu", "default", "absolute", "struc", "incbin"}


class _Resolved(NamedTuple):
    """An instruction with operand values for one pass, at its address."""

    bits: int
    mnemonic: str
    pre: _Prefixes
    ops: tuple
    address: int
    key: tuple
    text: str


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


def _split_commas(tokens: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    parts, depth = [[]], 0
    for token in tokens:
        if token[0] == "op" and token[1] in "([":
            depth += 1
        elif token[0] == "op" and token[1] in ")]":
            depth -= 1
        if token == ("op", ",") and depth == 0:
            parts.append([])
        else:
            parts[-1].append(token)
    if any(not part for part in parts):
        raise _Error("missing operand")
    return parts


class _Parser:
    """Turns preprocessed lines into statements; tracks bits, org and the local-label scope."""

    def __init__(self) -> None:
        self.bits, self.scope = 16, ""
        self.src = _Src("<none>", 0, "")
        self.origins: list[tuple[int, _Src]] = []
        self.stmts: list[_Stmt] = []
        self.directives = {"bits": self._bits, "use16": self._use, "use32": self._use,
                           "org": self._org, "section": self._section,
                           "segment": self._section}

    def qualify(self, name: str) -> str:
        return self.scope + name if name.startswith(".") and not name.startswith("..") else name

    def feed(self, src: _Src, code: str) -> None:
        try:
            self._line(src, code)
        except _Error as err:
            raise _located(src, err) from None

    def origin(self) -> int:
        values = {value for value, _ in self.origins}
        if len(values) > 1:
            raise _located(self.origins[-1][1], _Error("program origin redefined"))
        return values.pop() if values else 0

    def _line(self, src: _Src, code: str) -> None:
        self.src = src
        cur = _Cursor(_tokenize(code))
        if cur.accept("["):
            tokens = cur.rest()
            if tokens[-1:] != [("op", "]")]:
                raise _Error("missing ']' after directive")
            cur = _Cursor(tokens[:-1])
        name = self._label(cur)
        stmt = _Stmt(src, self.bits)
        if cur.word() == "equ":
            cur.next()
            stmt.label, stmt.body = self._require_label(name), _Equ(self._expr_only(cur))
        else:
            if name and not name.startswith("."):
                self.scope = name
            stmt.label = name and self.qualify(name)
            self._body(cur, stmt, code)
        self.stmts.append(stmt)

    def _label(self, cur: _Cursor) -> str | None:
        kind, text = cur.peek()
        if kind != "id":
            return None
        if cur.peek(1) == ("op", ":"):
            cur.pos += 2
        elif cur.word(1) in _LABEL_FOLLOWERS and text.lower() not in _PREFIX_WORDS:
            cur.pos += 1
        else:
            return None
        if text.lower() in _REGISTERS or text.lower() in _SIZE_BYTES:
            raise _Error(f"'{text}' is a reserved word and cannot be a label")
        return text

    def _require_label(self, name: str | None) -> str:
        if name is None:
            raise _Error("equ needs a label")
        return self.qualify(name)

    def _body(self, cur: _Cursor, stmt: _Stmt, code: str) -> None:
        if cur.word() == "times":
            cur.next()
            stmt.times = _parse_expr(cur, self)
        word = cur.word()
        if cur.done():
            if stmt.times is not None:
                raise _Error("times needs something to repeat")
        elif word in self.directives:
            if stmt.times is not None or stmt.label:
                raise _Error(f"'{word}' cannot have a label or times")
            cur.next()
            self.directives[word](cur, word)
        elif word in _UNSUPPORTED:
            raise _Error(f"unsupported directive '{word}'")
        else:
            stmt.body = self._content(cur, word, code)

    def _content(self, cur: _Cursor, word: str, code: str) -> object:
        if word in _DATA_UNITS:
            cur.next()
            return _Data(_DATA_UNITS[word], [self._data_item(part) for part in
                                             _split_commas(cur.rest())])
        if word in _RES_UNITS:
            cur.next()
            return _Reserve(_RES_UNITS[word], self._expr_only(cur))
        if word == "align":
            cur.next()
            return self._align(_split_commas(cur.rest()))
        return self._instruction(cur, code)

    def _expr_only(self, cur: _Cursor) -> tuple:
        node = _parse_expr(cur, self)
        cur.expect_end()
        return node

    def _data_item(self, tokens: list[tuple[str, str]]) -> bytes | tuple:
        if len(tokens) == 1 and tokens[0][0] == "str":
            return _string_bytes(tokens[0][1])
        return self._expr_only(_Cursor(tokens))

    def _align(self, parts: list) -> _Align:
        boundary = self._expr_only(_Cursor(parts[0]))
        if len(parts) == 1:
            return _Align(boundary, 0x90)
        fill = _Cursor(parts[1])
        if len(parts) != 2 or fill.word() not in ("db", "nop"):
            raise _Error("align takes a boundary and optionally 'db value' or 'nop'")
        if fill.next()[1].lower() == "nop":
            fill.expect_end()
            return _Align(boundary, 0x90)
        return _Align(boundary, _int_bytes(_constant(self._expr_only(fill), "align fill"), 1)[0])

    def _bits(self, cur: _Cursor, word: str) -> None:
        bits = _constant(self._expr_only(cur), "bits")
        if bits not in (16, 32):
            raise _Error(f"bits {bits} is not supported (16 or 32)")
        self.bits = bits

    def _use(self, cur: _Cursor, word: str) -> None:
        cur.expect_end()
        self.bits = 16 if word == "use16" else 32

    def _org(self, cur: _Cursor, word: str) -> None:
        self.origins.append((_constant(self._expr_only(cur), "org"), self.src))

    def _section(self, cur: _Cursor, word: str) -> None:
        name = cur.next()[1]
        if name.lower() != ".text":
            raise _Error("only the .text section is supported")
        cur.expect_end()

    def _instruction(self, cur: _Cursor, code: str) -> _Insn:
        pre = _Prefixes()
        while cur.word() in _PREFIX_WORDS and cur.peek(1)[0] == "id":
            field, value = _PREFIX_WORDS[cur.next()[1].lower()]
            pre = pre._replace(**{field: value})
        kind, text = cur.next()
        mnemonic = text.lower()
        if kind != "id" or not re.fullmatch(r"[a-z][a-z0-9]*", mnemonic):
            raise _Error(f"expected an instruction or directive, found '{text}'")
        tokens = cur.rest()
        specs = tuple(self._operand(part) for part in _split_commas(tokens)) if tokens else ()
        return _Insn(self.bits, pre, mnemonic, specs, code)

    def _operand(self, tokens: list[tuple[str, str]]) -> _OpSpec:
        cur, kw, mods = _Cursor(tokens), None, set()
        while cur.word() in _SIZE_BYTES or cur.word() in _MODIFIERS:
            word = cur.next()[1].lower()
            if word in _SIZE_BYTES:
                kw = word
            else:
                mods.add(word)
        if cur.accept("["):
            return self._memory(cur, kw, frozenset(mods))
        expr = _parse_expr(cur, self)
        if cur.accept(":"):
            return _OpSpec("far", kw, frozenset(mods), self._expr_only(cur), expr)
        cur.expect_end()
        return _OpSpec("expr", kw, frozenset(mods), expr, None)

    def _memory(self, cur: _Cursor, kw: str | None, mods: frozenset[str]) -> _OpSpec:
        seg = None
        if cur.word() in _SREGS and cur.peek(1) == ("op", ":"):
            seg = cur.next()[1].lower()
            cur.next()
        expr = _parse_expr(cur, self)
        if not cur.accept("]"):
            raise _Error("missing ']'")
        cur.expect_end()
        return _OpSpec("mem", kw, mods, expr, seg)


# ---------------------------------------------------------------------------- hand encodings

def _table(spec: str) -> dict[str, tuple[bytes, int | None]]:
    """'mnemonic hex width' triples; width is the operand size the form implies, '-' for none."""
    words = spec.split()
    return {words[i]: (bytes.fromhex(words[i + 1]), None if words[i + 2] == "-"
                       else int(words[i + 2])) for i in range(0, len(words), 3)}


_BARE = _table("""
    nop 90 -  hlt f4 -  cli fa -  sti fb -  clc f8 -  stc f9 -  cmc f5 -  cld fc -  std fd -
    sahf 9e -  lahf 9f -  leave c9 -  int3 cc -  into ce -  int1 f1 -  icebp f1 -  ud2 0f0b -
    clts 0f06 -  rdmsr 0f32 -  wrmsr 0f30 -  rdtsc 0f31 -  rdtscp 0f01f9 -  rdpmc 0f33 -
    cpuid 0fa2 -  invd 0f08 -  wbinvd 0f09 -  sysenter 0f34 -  sysexit 0f35 -  pause f390 -
    wait 9b -  fwait 9b -  xlat d7 -  xlatb d7 -  daa 27 -  das 2f -  aaa 37 -  aas 3f -
    pushf 9c -  pushfw 9c 16  pushfd 9c 32  popf 9d -  popfw 9d 16  popfd 9d 32
    pusha 60 -  pushaw 60 16  pushad 60 32  popa 61 -  popaw 61 16  popad 61 32
    iret cf -  iretw cf 16  iretd cf 32  cbw 98 16  cwde 98 32  cwd 99 16  cdq 99 32
    movsb a4 -  movsw a5 16  movsd a5 32  cmpsb a6 -  cmpsw a7 16  cmpsd a7 32
    stosb aa -  stosw ab 16  stosd ab 32  lodsb ac -  lodsw ad 16  lodsd ad 32
    scasb ae -  scasw af 16  scasd af 32  insb 6c -  insw 6d 16  insd 6d 32
    outsb 6e -  outsw 6f 16  outsd 6f 32
""")
_RETURNS = _table("""
    ret c3 -  retn c3 -  retw c3 16  retd c3 32  retnw c3 16  retnd c3 32
    retf cb -  retfw cb 16  retfd cb 32
""")
_CONDITIONS = ("o", "no", "b", "ae", "e", "ne", "be", "a", "s", "ns", "p", "np", "l", "ge",
               "le", "g")
_CC = {**{cc: cc for cc in _CONDITIONS}, "c": "b", "nae": "b", "nb": "ae", "nc": "ae", "z": "e",
       "nz": "ne", "na": "be", "nbe": "a", "pe": "p", "po": "np", "nge": "l", "nl": "ge",
       "ng": "le", "nle": "g"}
_JCC = {"j" + name: _CONDITIONS.index(cc) for name, cc in _CC.items()}
_LOOPS = {"loop": (0xE2, None), "loope": (0xE1, None), "loopz": (0xE1, None),
          "loopne": (0xE0, None), "loopnz": (0xE0, None), "jcxz": (0xE3, 16),
          "jecxz": (0xE3, 32)}
_PUSH_SREG = {"es": b"\x06", "cs": b"\x0e", "ss": b"\x16", "ds": b"\x1e", "fs": b"\x0f\xa0",
              "gs": b"\x0f\xa8"}
_POP_SREG = {"es": b"\x07", "ss": b"\x17", "ds": b"\x1f", "fs": b"\x0f\xa1", "gs": b"\x0f\xa9"}
_RELATIVE = {"jmp", "call", *_JCC, *_LOOPS}
_REG_FAMILY = {reg: "e" + reg for reg, width in _GPRS.items() if width == 2}
_SIZED_FORMS = {m: width for m, (_, width) in {**_BARE, **_RETURNS}.items() if width}
_BITS_KW = {16: "word", 32: "dword"}


def _segment(ins: _Resolved) -> str | None:
    segs = {op.seg for op in ins.ops if isinstance(op, _Mem) and op.seg} | (
        {ins.pre.seg} if ins.pre.seg else set())
    if len(segs) > 1:
        raise _Error("conflicting segment overrides")
    return segs.pop() if segs else None


def _finish(ins: _Resolved, body: bytes, opsize: bool, addrsize: bool,
            rep: int | None = None) -> bytes:
    """Prepend the legacy prefixes in NASM's order: lock, rep, segment, 0x66, 0x67."""
    pre, out = ins.pre, bytearray()
    if pre.lock:
        out.append(0xF0)
    if pre.rep or rep:
        out.append(pre.rep or rep)
    seg = _segment(ins)
    if seg:
        out.append(_SREGS[seg])
    if (pre.osize != ins.bits) if pre.osize else opsize:
        out.append(0x66)
    if (pre.asize != ins.bits) if pre.asize else addrsize:
        out.append(0x67)
    return bytes(out) + body


def _encode_bare(ins: _Resolved, ctx: _Ctx) -> bytes | None:
    if ins.ops:
        return None
    body, width = _BARE[ins.mnemonic]
    return _finish(ins, body, width is not None and width != ins.bits, False)


def _encode_return(ins: _Resolved, ctx: _Ctx) -> bytes:
    body, width = _RETURNS[ins.mnemonic]
    opsize = width is not None and width != ins.bits
    if not ins.ops:
        return _finish(ins, body, opsize, False)
    if len(ins.ops) != 1 or not isinstance(ins.ops[0], _Imm) or ins.ops[0].value < 0:
        raise _Error(f"{ins.mnemonic} takes an optional 16-bit byte count")
    return _finish(ins, bytes([body[0] - 1]) + _int_bytes(ins.ops[0].value, 2), opsize, False)


def _single_imm(ins: _Resolved) -> _Imm:
    if len(ins.ops) != 1 or not isinstance(ins.ops[0], _Imm) or "far" in ins.ops[0].mods:
        raise _Error(f"{ins.mnemonic} needs a target label or address")
    return ins.ops[0]


def _near_width(ins: _Resolved, kw: str | None) -> int:
    """The offset width a size keyword selects for a branch target or pushed immediate."""
    width = _SIZE_BYTES[kw] if kw else ins.bits // 8
    if width not in (2, 4):
        raise _Error(f"{ins.mnemonic} takes a word or dword operand here, not {kw}")
    return width


def _rel(ins: _Resolved, ctx: _Ctx, target: int, end: int, width: int) -> bytes:
    delta = target - end
    if width == 1 and not -128 <= delta <= 127:
        if ctx.final:
            raise _Error(f"short jump out of range ({delta:+d} bytes)")
        delta = 0
    return (delta & ((1 << (8 * width)) - 1)).to_bytes(width, "little")


def _fits_short(ins: _Resolved, ctx: _Ctx, op: _Imm, short_op: bytes) -> bool:
    """NASM's choice: short when the target is in rel8 range (optimistic for unknown targets)."""
    if ins.key in ctx.near:
        return False
    if not op.known:
        return True
    end = ins.address + len(_finish(ins, b"", False, False)) + len(short_op) + 1
    fits = -128 <= op.value - end <= 127
    if not fits and ctx.sticky:
        ctx.near.add(ins.key)
    return fits


def _jump(ins: _Resolved, ctx: _Ctx, op: _Imm, short_op: bytes | None, near_op: bytes) -> bytes:
    forced_near = "near" in op.mods or op.kw is not None or short_op is None
    if "short" in op.mods or (not forced_near and _fits_short(ins, ctx, op, short_op)):
        prefix = _finish(ins, b"", False, False)
        end = ins.address + len(prefix) + len(short_op) + 1
        return prefix + short_op + _rel(ins, ctx, op.value, end, 1)
    width = _near_width(ins, op.kw)
    prefix = _finish(ins, b"", width * 8 != ins.bits, False)
    end = ins.address + len(prefix) + len(near_op) + width
    return prefix + near_op + _rel(ins, ctx, op.value, end, width)


def _encode_jcc(ins: _Resolved, ctx: _Ctx) -> bytes:
    cc = _JCC[ins.mnemonic]
    return _jump(ins, ctx, _single_imm(ins), bytes([0x70 + cc]), bytes([0x0F, 0x80 + cc]))


def _encode_loop(ins: _Resolved, ctx: _Ctx) -> bytes:
    op = _single_imm(ins)
    opcode, counter = _LOOPS[ins.mnemonic]
    prefix = _finish(ins, b"", False, counter is not None and counter != ins.bits)
    end = ins.address + len(prefix) + 2
    return prefix + bytes([opcode]) + _rel(ins, ctx, op.value, end, 1)


def _encode_transfer(ins: _Resolved, ctx: _Ctx) -> bytes | None:
    """jmp/call: far direct and far indirect by hand, relative by hand, the rest by keystone."""
    op = ins.ops[0] if len(ins.ops) == 1 else None
    if isinstance(op, _Far):
        return _far_direct(ins, op)
    if isinstance(op, _Mem) and "far" in op.mods:
        return _far_indirect(ins, op)
    if isinstance(op, _Imm):
        near_op = b"\xe9" if ins.mnemonic == "jmp" else b"\xe8"
        return _jump(ins, ctx, _single_imm(ins), b"\xeb" if ins.mnemonic == "jmp" else None,
                     near_op)
    return None


def _far_direct(ins: _Resolved, op: _Far) -> bytes:
    width = _near_width(ins, op.kw)
    if not 0 <= op.off < (1 << (8 * width)):
        raise _Error(f"far offset {op.off:#x} does not fit in {width} bytes")
    opcode = b"\xea" if ins.mnemonic == "jmp" else b"\x9a"
    body = opcode + op.off.to_bytes(width, "little") + op.sel.to_bytes(2, "little")
    return _finish(ins, body, width * 8 != ins.bits, False)


def _far_indirect(ins: _Resolved, op: _Mem) -> bytes:
    """FF /5 (jmp) or FF /3 (call): keystone encodes the near form FF /4 or FF /2 for the same
    operand and the ModRM reg field is bumped by one."""
    width = _near_width(ins, op.kw)
    near = ins._replace(ops=(op._replace(kw=_BITS_KW[ins.bits], mods=frozenset()),))
    prefixes, body = _keystone_parts(near)
    reg = 4 if ins.mnemonic == "jmp" else 2
    if len(body) < 2 or body[0] != 0xFF or (body[1] >> 3) & 7 != reg:
        raise _Error(f"keystone encoded the near form of '{ins.text}' unexpectedly")
    body = bytes([0xFF, body[1] + 8]) + body[2:]
    return _finish(ins, body, width * 8 != ins.bits, 0x67 in prefixes)


def _encode_push_pop(ins: _Resolved, ctx: _Ctx) -> bytes | None:
    op = ins.ops[0] if len(ins.ops) == 1 else None
    if isinstance(op, _Reg) and op.kind == "sreg":
        table = _PUSH_SREG if ins.mnemonic == "push" else _POP_SREG
        if op.name not in table:
            raise _Error(f"{ins.mnemonic} {op.name} is not a valid instruction")
        return _finish(ins, table[op.name], False, False)
    if isinstance(op, _Imm) and ins.mnemonic == "push":
        return _push_imm(ins, op)
    return None


def _push_imm(ins: _Resolved, op: _Imm) -> bytes:
    """6A ib when the value fits a sign-extended byte (never for labels or 'strict'), else 68."""
    width = _near_width(ins, None if op.kw == "byte" else op.kw)
    _int_bytes(op.value, width)
    value = _signed(op.value, width)
    short = -128 <= value <= 127 and not op.reloc and "strict" not in op.mods
    if op.kw == "byte" and not short:
        raise _Error(f"push byte {op.value:#x}: value does not fit a signed byte")
    if short:
        return _finish(ins, b"\x6a" + _int_bytes(value, 1), width * 8 != ins.bits, False)
    return _finish(ins, b"\x68" + _int_bytes(op.value, width), width * 8 != ins.bits, False)


_HAND_ENCODERS = {**dict.fromkeys(_BARE, _encode_bare), **dict.fromkeys(_RETURNS, _encode_return),
                  **dict.fromkeys(_JCC, _encode_jcc), **dict.fromkeys(_LOOPS, _encode_loop),
                  "jmp": _encode_transfer, "call": _encode_transfer,
                  "push": _encode_push_pop, "pop": _encode_push_pop}


# ---------------------------------------------------------------------------- keystone

_ENGINES: dict[int, keystone.Ks] = {}
_KS_CACHE: dict[tuple[int, str], bytes | str] = {}
_NO_OPSIZE = {"lgdt", "lidt", "sgdt", "sidt"}  # keystone adds a 0x66 that truncates the base
_SIZELESS_MEMORY = {"jmp", "call", "lgdt", "lidt", "sgdt", "sidt", "invlpg", "lldt", "ltr", "lmsw",
                    "sldt", "str", "smsw", "verr", "verw", "lea", "nop", "fxsave", "fxrstor",
                    "clflush", "cmpxchg8b", *(f"set{cc}" for cc in _CC)}
_SELECTOR_SOURCE = {"lar", "lsl"}  # 'lar r32, r16' is 'lar r32, r32': keystone knows only that
_REG_GIVES_NO_SIZE = {"rol", "ror", "rcl", "rcr", "shl", "shr", "sal", "sar", "movzx", "movsx"}


def _ks_asm(bits: int, text: str) -> bytes:
    """keystone's encoding of one instruction, or _Error with keystone's complaint. Cached by
    (bits, text): nothing address-dependent reaches keystone (branches are encoded by hand)."""
    result = _KS_CACHE.get((bits, text))
    if result is None:
        result = _KS_CACHE[(bits, text)] = _ks_call(bits, text)
    if isinstance(result, str):
        raise _Error(result)
    return result


def _ks_call(bits: int, text: str) -> bytes | str:
    engine = _ENGINES.get(bits)
    if engine is None:
        mode = keystone.KS_MODE_16 if bits == 16 else keystone.KS_MODE_32
        engine = _ENGINES[bits] = keystone.Ks(keystone.KS_ARCH_X86, mode)
    try:
        code, count = engine.asm(text, 0, as_bytes=True)
    except keystone.KsError as err:
        if err.errno == keystone.KS_ERR_ASM_MNEMONICFAIL:
            return f"unknown mnemonic '{text.split()[0]}'"
        return f"invalid instruction '{text}' (keystone: {err})"
    if not code or count != 1:
        return f"keystone produced no encoding for '{text}'"
    return code


def _hex(value: int) -> str:
    return f"{value:#x}" if value >= 0 else f"-{-value:#x}"


def _memory_kw(ins: _Resolved) -> str | None:
    """The size a memory operand without a size keyword takes from the rest of the line."""
    sized = [op.kw for op in ins.ops if isinstance(op, _Imm) and op.kw]
    if sized:
        return sized[0]
    if ins.mnemonic in ("jmp", "call"):
        return _BITS_KW[ins.bits]
    dest = ins.ops[0]
    if ins.mnemonic in ("movzx", "movsx") and isinstance(dest, _Reg) and dest.width == 2:
        return "byte"  # NASM: the only source narrower than a 16-bit destination
    sized_by_reg = ins.mnemonic not in _REG_GIVES_NO_SIZE and any(
        isinstance(op, _Reg) for op in ins.ops)
    if not sized_by_reg and ins.mnemonic not in _SIZELESS_MEMORY:
        raise _Error("operation size not specified")
    return None


def _render(ins: _Resolved, wide: bool) -> tuple[str, list]:
    """Intel-syntax text for keystone. With `wide`, label-valued immediates and displacements
    that fit a byte become placeholders (patched later), so that keystone picks the full-width
    form NASM uses for relocatable values."""
    patches: list = []
    parts = [_render_operand(ins, op, wide, patches) for op in _keystone_operands(ins)]
    return f"{ins.mnemonic} {', '.join(parts)}".strip(), patches


def _keystone_operands(ins: _Resolved) -> tuple:
    """Register pairs spelled so that keystone produces NASM's encoding."""
    ops = ins.ops
    if len(ops) != 2 or not all(isinstance(op, _Reg) and op.kind == "gpr" for op in ops):
        return ops
    if ins.mnemonic == "xchg":
        return ops[::-1]  # NASM puts the first register in ModRM.reg, keystone the second
    if ins.mnemonic in _SELECTOR_SOURCE and ops[0].width == 4 and ops[1].width == 2:
        return ops[0], ops[1]._replace(name=_REG_FAMILY[ops[1].name], width=4)  # same bytes
    return ops


def _render_operand(ins: _Resolved, op: object, wide: bool, patches: list) -> str:
    if isinstance(op, _Reg):
        return op.name
    if isinstance(op, _Imm):
        if not -(1 << 31) <= op.value < (1 << 32):
            raise _Error(f"immediate {op.value:#x} does not fit in 32 bits")
        if wide and (op.reloc or "strict" in op.mods) and -128 <= op.value <= 127:
            patches.append(("imm", op.value, 0))
            return _hex(_IMM_MARK)
        return _hex(op.value)
    if isinstance(op, _Mem):
        return _render_memory(ins, op, wide, patches)
    raise _Error("a selector:offset operand is only valid for jmp and call")


def _render_memory(ins: _Resolved, op: _Mem, wide: bool, patches: list) -> str:
    if op.asize == 16:  # keystone adds a needless disp8 to [bp + si] but not to [si + bp]
        terms = [reg for reg in (op.index, op.base) if reg]
    else:
        terms = ([op.base] if op.base else []) + ([f"{op.index}*{op.scale}"] if op.index else [])
    disp = op.disp
    if wide and op.reloc and terms and -128 <= disp <= 127:
        patches.append(("disp", disp, op.asize // 8))
        disp = _DISP_MARK
    if disp or not terms:
        terms.append(_hex(disp))
    address = "[" + " + ".join(terms).replace("+ -", "- ") + "]"
    kw = op.kw or _memory_kw(ins)
    return f"{_PTR[kw]} ptr {address}" if kw else address


def _apply_patches(code: bytes, patches: list) -> bytes | None:
    for kind, value, width in patches:
        if kind == "imm":
            width = next((w for w in (4, 2) if code.endswith(_IMM_MARK.to_bytes(w, "little"))), 0)
            at = len(code) - width
        else:
            at = code.find(_DISP_MARK.to_bytes(width, "little"))
        if not width or at < 0:
            return None
        code = code[:at] + _int_bytes(value, width) + code[at + width:]
    return code


def _keystone_parts(ins: _Resolved) -> tuple[bytes, bytes]:
    """keystone's encoding split into its legacy prefixes and the rest."""
    text, patches = _render(ins, wide=True)
    code = _ks_asm(ins.bits, text)
    if patches:
        code = _apply_patches(code, patches) or _ks_asm(ins.bits, _render(ins, wide=False)[0])
    split = 0
    while split < len(code) and code[split] in LEGACY_PREFIXES:
        split += 1
    return code[:split], code[split:]


def _fixed_opsize(ins: _Resolved, opsize: bool) -> bool:
    """Where keystone's 0x66 differs from NASM's: lgdt & co. (a real bug) and mov with a
    segment register (NASM adds 0x66 only for 'mov r16/r32, sreg' of the other width)."""
    if ins.mnemonic in _NO_OPSIZE:
        return False
    if ins.mnemonic == "mov" and any(isinstance(op, _Reg) and op.kind == "sreg" for op in ins.ops):
        dest = ins.ops[0]
        return isinstance(dest, _Reg) and dest.kind == "gpr" and dest.width * 8 != ins.bits
    return opsize


def _keystone(ins: _Resolved) -> bytes:
    prefixes, body = _keystone_parts(ins)
    rep = next((p for p in prefixes if p in (0xF2, 0xF3)), None)
    return _finish(ins, body, _fixed_opsize(ins, 0x66 in prefixes), 0x67 in prefixes, rep)


def _encode(ins: _Resolved, ctx: _Ctx) -> tuple[bytes, str]:
    hand = _HAND_ENCODERS.get(ins.mnemonic)
    code = hand(ins, ctx) if hand else None
    if code is not None:
        return code, "the assembler"
    return _keystone(ins), "keystone"


# ---------------------------------------------------------------------------- capstone guard

_GUARD = Disassembler()
_FAMILY_ALIASES = {"sal": "shl", "retn": "ret", "retnw": "retw", "retnd": "retd", "xlat": "xlatb",
                   "fwait": "wait", "icebp": "int1", "loopz": "loope", "loopnz": "loopne",
                   "pushal": "pushad", "popal": "popad", "ljmp": "jmp", "lcall": "call",
                   "cwde": "cbw", "cdq": "cwd"}  # capstone 5 names 98/99 cwde/cdq in 16-bit code


def _family(mnemonic: str) -> str:
    for head in ("j", "set", "cmov"):
        if mnemonic.startswith(head) and mnemonic[len(head):] in _CC:
            return head + _CC[mnemonic[len(head):]]
    return _FAMILY_ALIASES.get(mnemonic, mnemonic)


def _same_family(source: str, decoded: str) -> bool:
    a, b = _family(source), _family(decoded.split()[-1])
    return a == b or (a, b) == ("xchg", "nop") or any(a + s == b or b + s == a for s in "bwdq")


def _asks_opsize(ins: _Resolved) -> bool:
    """The source asks for 0x66 when it names a 16/32-bit general register, or a word/dword
    size, or a sized mnemonic (pushfd, iretw, movsd, ...) that is not the mode's default
    width, or writes o16/o32."""
    if ins.pre.osize:
        return ins.pre.osize != ins.bits
    if _SIZED_FORMS.get(ins.mnemonic, ins.bits) != ins.bits:
        return True
    return any(_op_width(op) in (2, 4) and _op_width(op) != ins.bits // 8 for op in ins.ops)


def _op_width(op: _Reg | _Imm | _Mem | _Far) -> int:
    if isinstance(op, _Reg):
        return op.width if op.kind == "gpr" else 0
    return _SIZE_BYTES.get(op.kw, 0) if op.kw else 0


def _asks_addrsize(ins: _Resolved) -> bool:
    """0x67 is required exactly when a memory operand's registers (or a16/a32, jcxz/jecxz)
    select the other address size."""
    if ins.pre.asize:
        return ins.pre.asize != ins.bits
    counter = _LOOPS.get(ins.mnemonic, (0, None))[1]
    if counter:
        return counter != ins.bits
    return any(isinstance(op, _Mem) and op.asize != ins.bits for op in ins.ops)


def _same_memory(op: _Mem, decoded, seg: str | None) -> bool:
    mem = decoded.mem
    if (op.seg or seg) != mem.segment or (op.disp - mem.disp) & ((1 << op.asize) - 1):
        return False
    if op.kw and "far" not in op.mods and _SIZE_BYTES[op.kw] != decoded.size:
        return False
    if op.asize == 16:
        return {op.base, op.index} == {mem.base, mem.index}
    return (op.base, op.index) == (mem.base, mem.index) and (not op.index or op.scale == mem.scale)


def _same_imm(value: int, decoded, size: int) -> bool:
    """`value` fits the decoded immediate and equals it; `size` (if any) must match too."""
    bits = 8 * decoded.size
    if size and size != decoded.size:
        return False
    return -(1 << (bits - 1)) <= value < (1 << bits) and not (value - decoded.imm) % (1 << bits)


def _operand_problem(ins: _Resolved, insn: Insn) -> str | None:
    """Every source register, immediate/target and memory operand must appear in the decode.
    Registers compare exactly, except in mov with a segment register and in lar/lsl, whose
    selector operand is 16-bit whatever register width is written."""
    if _family(ins.mnemonic) == "xchg" and insn.mnemonic == "nop":
        return None
    loose = ins.mnemonic in _SELECTOR_SOURCE or ins.mnemonic == "mov" and any(
        isinstance(op, _Reg) and op.kind == "sreg" for op in ins.ops)
    regs = {_reg_key(op.reg, loose) for op in insn.operands if op.kind == "reg"}
    imms = [op for op in insn.operands if op.kind == "imm"]
    mems = [op for op in insn.operands if op.kind == "mem"]
    for op in ins.ops:
        if isinstance(op, _Reg) and _reg_key(op.name, loose) not in regs:
            return f"register {op.name} is missing"
        if isinstance(op, _Far) and not all(any(_same_imm(v, imm, 0) for imm in imms)
                                            for v in (op.sel, op.off)):
            return "the far pointer differs"
        if isinstance(op, _Imm) and not any(_same_imm(op.value, imm, _imm_size(op))
                                            for imm in imms):
            return _imm_problem(op.value, imms)
        if isinstance(op, _Mem) and not any(_same_memory(op, m, ins.pre.seg) for m in mems):
            return "the memory operand differs"
    return None


def _imm_size(op: _Imm) -> int:
    return _op_width(op) if _op_width(op) in (2, 4) else 0


def _imm_problem(value: int, imms: list) -> str:
    truncated = [imm for imm in imms if not (value - imm.imm) % (1 << (8 * imm.size))]
    if truncated:
        return f"the value {value:#x} does not fit its {truncated[0].size}-byte operand"
    return "an immediate or target differs"


def _reg_key(name: str, loose: bool) -> str:
    return _REG_FAMILY.get(name, name) if loose else name


def _problem(ins: _Resolved, insn: Insn | None, code: bytes) -> str | None:
    if insn is None:
        return "capstone cannot decode it"
    if insn.size != len(code):
        return f"capstone decodes {insn.size} of the {len(code)} bytes"
    if not _same_family(ins.mnemonic, insn.mnemonic):
        return "a different instruction"
    if 0x66 in insn.prefixes and not _asks_opsize(ins):
        return "an operand-size prefix (0x66) the source did not ask for"
    if (0x67 in insn.prefixes) != _asks_addrsize(ins):
        return "the address-size prefix (0x67) does not match the memory operand"
    return _operand_problem(ins, insn)


def _verify(ins: _Resolved, code: bytes, who: str) -> None:
    insn = _GUARD.decode(code, ins.address, ins.bits)
    problem = _problem(ins, insn, code)
    if problem:
        decoded = f"'{insn}'" if insn else "nothing"
        raise _Error(f"{who} encoded '{ins.text}' as {code.hex(' ')}, which capstone reads as "
                     f"{decoded} in {ins.bits}-bit code: {problem}")


# ---------------------------------------------------------------------------- layout

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
        return Image(code, self.origin, {k: v.value for k, v in symbols.items()}, listing)

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


# ---------------------------------------------------------------------------- public API

def _assemble_lines(pre: _Preprocessor) -> Image:
    parser = _Parser()
    for src, code in pre.lines:
        parser.feed(src, code)
    if not parser.stmts:
        return Image(b"", parser.origin(), {}, [])
    return _Layout(parser.stmts, parser.origin()).run()


def assemble(source: str, *, filename: str = "<string>",
             include_dirs: Sequence[str | Path] = ()) -> Image:
    """Assemble NASM-dialect `source` into a flat image; raises AsmError.

    Supported: bits 16/32 ([bits N], use16/use32), org, labels and .local labels, equ, %define
    (no parameters), %undef, %include (next to `filename`, then in include_dirs), db/dw/dd/dq,
    resb/resw/resd/resq, times, align N[, db X], $ and $$, NASM operators and number forms.
    """
    pre = _Preprocessor(include_dirs)
    pre.feed(source, filename, ())
    return _assemble_lines(pre)


def assemble_file(path: str | Path, *, include_dirs: Sequence[str | Path] = ()) -> Image:
    """Assemble a file; includes are searched in its own directory, then in include_dirs."""
    path = Path(path)
    pre = _Preprocessor(include_dirs)
    pre.feed(path.read_text(), str(path), (str(path.resolve()),))
    return _assemble_lines(pre)
