"""The CRT controller of a CGA/VGA colour adapter (Motorola 6845 register set, as extended by the
IBM VGA CRTC registers 0x00-0x18) at index/data ports 0x3D4/0x3D5, and a renderer that turns the
80x25 text buffer at physical 0xB8000 (character + attribute pairs) into lines of text.
"""
from __future__ import annotations

from vmm.snapshot.state import PlainState

TEXT_BUFFER = 0xB8000
COLUMNS, ROWS = 80, 25
TEXT_BYTES = COLUMNS * ROWS * 2

CURSOR_START, CURSOR_END = 0x0A, 0x0B
START_ADDRESS_HIGH, START_ADDRESS_LOW = 0x0C, 0x0D
CURSOR_LOCATION_HIGH, CURSOR_LOCATION_LOW = 0x0E, 0x0F
CURSOR_DISABLE = 0x20

# The CRTC values of the standard 80x25 colour text mode 3 (IBM VGA Technical Reference,
# mode 3 parameter table): what a BIOS leaves after POST. Cursor and start address are 0.
MODE3_REGISTERS = bytes((0x5F, 0x4F, 0x50, 0x82, 0x55, 0x81, 0xBF, 0x1F, 0x00, 0x4F, 0x0D, 0x0E,
                         0x00, 0x00, 0x00, 0x00, 0x9C, 0x8E, 0x8F, 0x28, 0x1F, 0x96, 0xB9, 0xA3,
                         0xFF))

# Code page 437 glyphs for the control-character range, as the adapter's character ROM draws
# them (0x00 is blank); 0x20-0xFF decode through Python's cp437 codec, 0x7F is the house.
_LOW_GLYPHS = (" ☺☻♥♦♣♠•◘○◙♂♀♪♫☼►◄↕‼¶§▬↨↑↓→←∟↔▲▼")
_GLYPHS = _LOW_GLYPHS + bytes(range(0x20, 0x100)).decode("cp437").replace("\x7f", "⌂")


class Crtc(PlainState):
    """Index register at offset 0 (readable, as on the VGA; the CGA's 6845 index is write-only),
    data at offset 1 for the selected register. All 256 indices store what is written; only the
    cursor and start-address registers mean anything to this model (the VGA's CR11 write
    protection of CR0-CR7 is not enforced). A 16-bit write to the index port sets the index from
    the low byte and writes the high byte to that register (``out dx, ax``)."""
    STATE = ("index", "registers")

    name = "crtc"

    def __init__(self) -> None:
        self.index = 0
        self.registers = bytearray(256)
        self.registers[:len(MODE3_REGISTERS)] = MODE3_REGISTERS

    def read(self, offset: int, size: int) -> int:
        return self.registers[self.index] if offset else self.index

    def write(self, offset: int, size: int, value: int) -> None:
        if offset == 0:
            self.index = value & 0xFF
            if size > 1:
                self.registers[self.index] = value >> 8 & 0xFF
        else:
            self.registers[self.index] = value & 0xFF

    @property
    def cursor_location(self) -> int:
        """Cursor position as a character offset from the start of video memory."""
        return self.registers[CURSOR_LOCATION_HIGH] << 8 | self.registers[CURSOR_LOCATION_LOW]

    @property
    def start_address(self) -> int:
        return self.registers[START_ADDRESS_HIGH] << 8 | self.registers[START_ADDRESS_LOW]

    @property
    def cursor_visible(self) -> bool:
        return not self.registers[CURSOR_START] & CURSOR_DISABLE

    def cursor_position(self, columns: int = COLUMNS) -> tuple[int, int]:
        """(row, column) of the cursor on the displayed page."""
        return divmod((self.cursor_location - self.start_address) & 0xFFFF, columns)


def render_text(buffer: bytes, columns: int = COLUMNS, rows: int = ROWS, start: int = 0,
                trim: bool = False) -> list[str]:
    """Lines of text from a text-mode buffer: ``start`` is the CRTC start address in character
    cells; attribute bytes are ignored; cells past the end of ``buffer`` are blank. With
    ``trim`` trailing blanks are dropped from each line."""
    cells = buffer[start * 2:(start + columns * rows) * 2:2]
    text = "".join(_GLYPHS[byte] for byte in cells).ljust(columns * rows)
    lines = [text[row * columns:(row + 1) * columns] for row in range(rows)]
    return [line.rstrip() for line in lines] if trim else lines


def render_attributes(buffer: bytes, columns: int = COLUMNS, rows: int = ROWS,
                      start: int = 0) -> list[bytes]:
    """The attribute byte of every cell, row by row (foreground, background, blink/intensity)."""
    attributes = buffer[start * 2 + 1:(start + columns * rows) * 2:2].ljust(columns * rows,
                                                                             b"\x00")
    return [attributes[row * columns:(row + 1) * columns] for row in range(rows)]
