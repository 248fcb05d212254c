"""Source text for the assembler: errors located at a source line, the preprocessor
(%include, %define, %undef, comments) and the lexer (tokens, NASM number forms, string
constants with their escapes, and a cursor over one line's tokens)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import NamedTuple, Sequence

_MAX_EXPANSIONS = 32


class AsmError(Exception):
    """An assembly error located at a source line."""

    def __init__(self, filename: str, lineno: int, line: str, message: str) -> None:
        self.filename, self.lineno, self.line, self.message = filename, lineno, line, message
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f"{self.filename}:{self.lineno}: error: {self.message}"
        return f"{where}\n    {self.line}" if self.line else where


def read_source(path: Path) -> str:
    """A source file's text: UTF-8 (string constants are assembled as UTF-8), else an AsmError
    at the first line that is not (OSError passes: the caller knows how to name the file)."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        lineno = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise AsmError(str(path), lineno, "", f"not UTF-8 text: byte {data[exc.start]:#04x} "
                       f"at column {column}") from None


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
            text = read_source(path)
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
