"""vmm/debug/symbols.py and the debugger's address syntax over it (vmm/debug/arguments.py)."""
from __future__ import annotations

import pytest

from vmm.debug.arguments import DebuggerError, parse_address
from vmm.debug.symbols import NO_SYMBOLS, SymbolTable

TABLE = SymbolTable({"start": 0x7C00, "start.loop": 0x7C00, "start.next": 0x7C10,
                     "message": 0x7C40}, end=0x7C50)


def registers() -> dict[str, int]:
    return {"esp": 0x7000, "pc": 0x7C12}


def test_an_address_belongs_to_the_symbol_at_or_below_it_until_the_end_of_the_image():
    assert TABLE.describe(0x7C00) == "start"          # the first defined of two names wins
    assert TABLE.describe(0x7C0F) == "start+15"
    assert TABLE.describe(0x7C10) == "start.next"
    assert TABLE.describe(0x7C4F) == "message+15"
    assert TABLE.describe(0x7C50) == "" and TABLE.describe(0x7BFF) == ""
    assert TABLE.tag(0x7C12) == " <start.next+2>" and TABLE.tag(0x100) == ""
    assert SymbolTable({"far": 0x100000}).describe(0x200000) == "far+1048576"  # no end given


def test_addresses_are_numbers_registers_or_symbols_with_an_offset():
    cases = {"0x7c00": 0x7C00, "31744": 0x7C00, "*0x7c00": 0x7C00, "start.next": 0x7C10,
             "*start.next": 0x7C10, "start+0x10": 0x7C10, "message - 4": 0x7C3C,
             "$pc": 0x7C12, "$esp-4": 0x6FFC, "0x7c00+2": 0x7C02, "start-1": 0x7BFF}
    assert {text: parse_address(text, registers, TABLE) for text in cases} == cases


@pytest.mark.parametrize("text,message", [
    ("strat", "bad address: 'strat' is not a number, $register or symbol of this guest; "
              "did you mean start?"),
    ("Message", "bad address: 'Message' is not a number, $register or symbol of this guest; "
                "did you mean message?"),
    ("nothing_like_it", "bad address: 'nothing_like_it' is not a number, $register or symbol "
                        "of this guest"),
    ("7c00", "bad address: '7c00' (use decimal or 0x-prefixed hex)"),
    ("start+x", "bad offset: 'x' (use decimal or 0x-prefixed hex)"),
    ("$nope", "no register $nope; try $eip, $esp, $pc (linear), $eax ..."),
    ("start+", "bad address: 'start+' (a number, $reg or symbol, optionally +/- N)"),
])
def test_bad_addresses_say_what_was_expected(text, message):
    with pytest.raises(DebuggerError) as caught:
        parse_address(text, registers, TABLE)
    assert str(caught.value) == message


def test_a_guest_without_symbols_says_so():
    with pytest.raises(DebuggerError, match=r"this guest has no symbols"):
        parse_address("start", registers, NO_SYMBOLS)
