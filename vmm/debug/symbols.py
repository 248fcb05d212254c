"""A guest's symbol table as a debugger uses it, after gdb's minimal symbols: a name gives an
address (``break start.next``), and an address is shown as the symbol at or below it with the
distance in bytes, ``<start+6>``.

The names and linear addresses come from the guest image (``GuestImage.symbols``: an assembled
guest's labels, an ELF kernel's .symtab). An address belongs to the nearest symbol at or below it
until the next symbol or the end of the image; of several names for one address, the one defined
first (a parent label before its first local label) is the one shown.
"""
from __future__ import annotations

import bisect
import difflib


class SymbolTable:
    """Name <-> address lookups over ``symbols`` (name -> linear address, in definition order);
    addresses at or past ``end`` (the end of the loaded image) belong to no symbol."""

    def __init__(self, symbols: dict[str, int], end: int | None = None):
        self.by_name = dict(symbols)
        ordered = sorted(self.by_name.items(), key=lambda item: item[1])  # stable: first name
        self.addresses = [address for _, address in ordered]
        self.names = [name for name, _ in ordered]
        self.end = end

    def __bool__(self) -> bool:
        return bool(self.by_name)

    def address(self, name: str) -> int | None:
        return self.by_name.get(name)

    def suggestions(self, name: str) -> list[str]:
        """Names the user may have meant: same spelling in another case, then close spellings."""
        folded = [known for known in self.by_name if known.lower() == name.lower()]
        return folded or difflib.get_close_matches(name, self.by_name, n=3, cutoff=0.6)

    def lookup(self, address: int) -> tuple[str, int] | None:
        """(name, offset) of the symbol ``address`` belongs to, or None."""
        if self.end is not None and address >= self.end:
            return None
        index = bisect.bisect_right(self.addresses, address) - 1
        if index < 0:
            return None
        first = bisect.bisect_left(self.addresses, self.addresses[index])
        return self.names[first], address - self.addresses[first]

    def describe(self, address: int) -> str:
        """'start+6' (gdb's decimal offset), 'start', or '' for an address of no symbol."""
        found = self.lookup(address)
        if found is None:
            return ""
        name, offset = found
        return f"{name}+{offset}" if offset else name

    def tag(self, address: int) -> str:
        """' <start+6>' to follow an address, or ''."""
        text = self.describe(address)
        return f" <{text}>" if text else ""


NO_SYMBOLS = SymbolTable({})

__all__ = ["NO_SYMBOLS", "SymbolTable"]
