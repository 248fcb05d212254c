"""The statement parser: turns preprocessed lines into labels, equ, times, data, reservations,
alignment and instructions (prefixes, size keywords, memory and far operands), and handles the
bits, use16/use32, org and section directives."""

from __future__ import annotations

import re

from emu.asm.expressions import (_MODIFIERS, _REGISTERS, _SIZE_BYTES, _SREGS, _constant,
                                 _int_bytes, _parse_expr)
from emu.asm.layout import _Align, _Data, _Equ, _Insn, _Reserve, _Stmt
from emu.asm.operands import _OpSpec, _Prefixes
from emu.asm.source import _Cursor, _Error, _located, _Src, _string_bytes, _tokenize

_PREFIX_WORDS = {"lock": ("lock", True), "rep": ("rep", 0xF3), "repe": ("rep", 0xF3),
                 "repz": ("rep", 0xF3), "repne": ("rep", 0xF2), "repnz": ("rep", 0xF2),
                 "o16": ("osize", 16), "o32": ("osize", 32), "a16": ("asize", 16),
                 "a32": ("asize", 32), **{seg: ("seg", seg) for seg in _SREGS}}
_DATA_UNITS = {"db": 1, "dw": 2, "dd": 4, "dq": 8}
_RES_UNITS = {"resb": 1, "resw": 2, "resd": 4, "resq": 8}
_LABEL_FOLLOWERS = {"equ", "times", "align", *_DATA_UNITS, *_RES_UNITS}
_UNSUPPORTED = {"global", "extern", "common", "cpu", "default", "absolute", "struc", "incbin"}


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
