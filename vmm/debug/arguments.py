"""The debugger's argument syntax, in gdb's spelling: numbers, addresses (``0x7c00``, ``$reg``
or a symbol of the guest such as ``start.next``, each with an optional ``+N`` or ``-N``, also
written ``*ADDR``), ``x/NFU`` formats, and exit filters for ``break exit REASON [filter]`` (port,
CR number, MSR, vector, guest RIP range). Bad input raises ``DebuggerError`` with a message that
says what was expected.
"""
from __future__ import annotations

import re
from typing import Callable

from emu.paging import BusError, Fault
from vmm.debug.debuggee import ExitFilter
from vmm.debug.exit_notes import reason_by_name
from vmm.debug.symbols import NO_SYMBOLS, SymbolTable

UNITS = {"b": 1, "h": 2, "w": 4, "g": 8}
FILTERS = ("port", "cr", "msr", "vector", "rip")
MAX_DUMP = 1 << 16
DUMP_USAGE = "usage: x/NFU [-p] ADDR, for example x/16xb 0x7c00"
FILTER_USAGE = "usage: break exit REASON [port N|cr N|msr N|vector N|rip A-B]"
# [*] BASE [+|- OFFSET]; NASM's symbol names hold neither + nor -.
ADDRESS = re.compile(r"\s*\*?\s*(?P<base>[^\s*+-]+)\s*(?:(?P<sign>[+-])\s*(?P<offset>\S+)\s*)?")


class DebuggerError(Exception):
    """Bad input to a debugger command; the message says what was expected."""


def parse_number(text: str, what: str = "number") -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise DebuggerError(f"bad {what}: {text!r} (use decimal or 0x-prefixed hex)") from None


def parse_count(text: str, what: str) -> int:
    value = parse_number(text, what)
    if value < 1:
        raise DebuggerError(f"{what} must be positive, not {value}")
    return value


def parse_address(text: str, registers: Callable[[], dict[str, int]],
                  symbols: SymbolTable = NO_SYMBOLS) -> int:
    """A linear address: a number, `$reg` or a symbol of the guest, with an optional +/- N
    offset, optionally written `*ADDR` (gdb style); `$pc` is the linear address of the next
    instruction. Examples: 0x7c10, start.next, start+0x10, $esp-4."""
    match = ADDRESS.fullmatch(text)
    if match is None:
        raise DebuggerError(f"bad address: {text.strip()!r} (a number, $reg or symbol, "
                            "optionally +/- N)")
    base = match["base"]
    if base.startswith("$"):
        address = register_value(base[1:], registers())
    elif base[0].isdigit():
        address = parse_number(base, "address")
    else:
        address = symbol_value(base, symbols)
    if match["sign"]:
        delta = parse_number(match["offset"], "offset")
        address += delta if match["sign"] == "+" else -delta
    return address & 0xFFFFFFFF


def symbol_value(name: str, symbols: SymbolTable) -> int:
    address = symbols.address(name)
    if address is not None:
        return address
    if not symbols:
        raise DebuggerError(f"bad address: {name!r} is not a number or $register (this guest "
                            "has no symbols)")
    close = symbols.suggestions(name)
    hint = f"; did you mean {', '.join(close[:-1])} or {close[-1]}?" if len(close) > 1 else (
        f"; did you mean {close[0]}?" if close else "")
    raise DebuggerError(f"bad address: {name!r} is not a number, $register or symbol of this "
                        f"guest{hint}")


def register_value(name: str, regs: dict[str, int]) -> int:
    value = regs.get(name.lower())
    if value is None:
        raise DebuggerError(f"no register ${name}; try $eip, $esp, $pc (linear), $eax ...")
    return value


def parse_dump(arg: str) -> tuple[int, int, bool, str]:
    """`x/NFU [-p] ADDR` -> (count, unit bytes, physical?, address text); plain `x ADDR` is
    x/1xw ADDR, gdb's first default."""
    spec, _, rest = arg.partition(" ") if arg.startswith("/") else ("/1xw", "", arg)
    count, unit = parse_format(spec)
    words = rest.split()
    physical = "-p" in words
    words = [w for w in words if w != "-p"]
    if len(words) != 1:
        raise DebuggerError(DUMP_USAGE)
    return count, unit, physical, words[0]


def parse_format(spec: str) -> tuple[int, int]:
    """gdb's /NFU with F = x: (count, unit bytes); the unit defaults to w."""
    if not spec.startswith("/"):
        raise DebuggerError(DUMP_USAGE)
    body = spec[1:]
    digits = len(body) - len(body.lstrip("0123456789"))
    count = int(body[:digits]) if digits else 1
    letters = body[digits:]
    units = [c for c in letters if c in UNITS]
    if set(letters) - {"x"} - set(UNITS) or len(units) > 1:
        raise DebuggerError(f"bad format {spec!r}: use x/Nx with b, h, w or g")
    unit = UNITS[units[0] if units else "w"]
    if not 1 <= count * unit <= MAX_DUMP:
        raise DebuggerError(f"x shows 1..{MAX_DUMP} bytes at a time")
    return count, unit


def parse_exit_filter(words: list[str]) -> ExitFilter:
    """`REASON [port N] [cr N] [msr N] [vector N] [rip A-B]` -> ExitFilter."""
    if not words:
        raise DebuggerError(FILTER_USAGE)
    fields = {"reason": reason_by_name(words[0])}
    pairs = words[1:]
    if len(pairs) % 2:
        raise DebuggerError(f"filter {pairs[-1]!r} needs a value; {FILTER_USAGE}")
    for key, value in zip(pairs[::2], pairs[1::2]):
        if key not in FILTERS:
            raise DebuggerError(f"unknown exit filter {key!r}; one of: {', '.join(FILTERS)}")
        if key == "rip":
            fields["rip_range"] = parse_range(value)
        else:
            fields[key] = parse_number(value, key)
    return ExitFilter(**fields)


def parse_range(text: str) -> tuple[int, int]:
    low, sep, high = text.partition("-")
    if not sep:
        raise DebuggerError(f"rip filter wants a range A-B, not {text!r}")
    return parse_number(low, "address"), parse_number(high, "address")


def describe_fault(exc: Fault | BusError) -> str:
    if isinstance(exc, BusError):
        return str(exc)
    if exc.vector == 14:
        return f"page fault at {exc.cr2:#x}, error code {exc.error_code:#x}"
    return f"fault vector {exc.vector}"
