"""CGA/VGA CRT controller at 0x3D4/0x3D5 and the text-buffer renderer, without a CPU.

Register numbers from the Motorola 6845 datasheet (R10-R15: cursor start/end, start address,
cursor location) and the IBM VGA mode 3 CRTC table; the access pattern is xv6's console.c.
"""
from vmm.bus import Bus
from vmm.devices.crtc import Crtc, TEXT_BYTES, render_attributes, render_text


def cells(text, attribute=0x07):
    return b"".join(bytes((ord(ch), attribute)) for ch in text)


def board():
    crtc = Crtc()
    bus = Bus("pio")
    bus.insert(crtc, 0x3D4, 2)
    return crtc, bus


def test_xv6_cursor_read_and_write():
    crtc, bus = board()
    bus.write(0x3D4, 1, 14)
    pos = bus.read(0x3D5, 1) << 8
    bus.write(0x3D4, 1, 15)
    pos |= bus.read(0x3D5, 1)
    assert pos == 0                          # never all-ones: xv6 panics on "pos under/overflow"
    pos = 80 * 3 + 5
    bus.write(0x3D4, 1, 14)
    bus.write(0x3D5, 1, pos >> 8)
    bus.write(0x3D4, 1, 15)
    bus.write(0x3D5, 1, pos & 0xFF)
    assert crtc.cursor_location == 245 and crtc.cursor_position() == (3, 5)


def test_index_reads_back_and_other_registers_are_stored():
    crtc, bus = board()
    assert bus.read(0x3D5, 1) == 0x5F        # R0 horizontal total, mode 3
    bus.write(0x3D4, 1, 0x0A)
    assert bus.read(0x3D4, 1) == 0x0A and bus.read(0x3D5, 1) == 0x0D   # cursor start
    bus.write(0x3D4, 1, 0x40)
    bus.write(0x3D5, 1, 0x99)
    assert bus.read(0x3D5, 1) == 0x99


def test_word_write_to_the_index_port_sets_index_and_data():
    crtc, bus = board()
    bus.write(0x3D4, 2, 0x200A)              # out dx, ax: cursor start = 0x20 (cursor off)
    assert crtc.index == 0x0A and not crtc.cursor_visible


def test_render_text_lines_ignores_attributes():
    buffer = bytearray(TEXT_BYTES)
    buffer[:10] = cells("hello", 0x1F)
    buffer[160:166] = cells("$ ls")[:6]
    lines = render_text(bytes(buffer))
    assert len(lines) == 25 and all(len(line) == 80 for line in lines)
    assert lines[0] == "hello".ljust(80) and lines[1].rstrip() == "$ l"
    assert render_text(bytes(buffer), trim=True)[:3] == ["hello", "$ l", ""]


def test_render_code_page_437_glyphs_and_start_address():
    buffer = cells("\x01\xdb\xc4\x7f\x00A")
    assert render_text(buffer, columns=6, rows=1) == ["☺█─⌂ A"]
    assert render_text(buffer, columns=2, rows=1, start=4) == [" A"]


def test_short_buffer_renders_blank_cells_and_attributes():
    assert render_text(cells("ab"), columns=4, rows=2) == ["ab  ", "    "]
    assert render_attributes(cells("ab", 0x4E), columns=2, rows=2) == [b"\x4e\x4e", b"\0\0"]
