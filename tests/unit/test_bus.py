"""Port-I/O and MMIO bus routing, conflicts, unclaimed accesses and IRQ lines."""
import pytest

from vmm.bus import BadAccessSize, Bus, BusConflict, IrqLine


class Recorder:
    """A device that remembers every access it sees and reads back a fixed value."""

    def __init__(self, name, value=0x5A):
        self.name = name
        self.value = value
        self.log = []

    def read(self, offset, size):
        self.log.append(("r", offset, size))
        return self.value

    def write(self, offset, size, value):
        self.log.append(("w", offset, size, value))


@pytest.fixture(params=["pio", "mmio"])
def bus(request):
    return Bus(request.param)


def test_device_sees_offset_in_its_own_window(bus):
    uart = Recorder("uart")
    bus.insert(uart, 0x3F8, 8)
    assert bus.read(0x3FD, 1) == 0x5A
    assert bus.write(0x3F8, 1, 0x41) is True
    assert uart.log == [("r", 5, 1), ("w", 0, 1, 0x41)]


def test_lookup_returns_device_and_offset_or_none(bus):
    pic = Recorder("pic")
    bus.insert(pic, 0x20, 2)
    assert bus.lookup(0x21) == (pic, 1)
    assert bus.lookup(0x1F) is None
    assert bus.lookup(0x22) is None


@pytest.mark.parametrize("size, expected", [(1, 0xFF), (2, 0xFFFF), (4, 0xFFFFFFFF)])
def test_unclaimed_read_is_all_ones(bus, size, expected):
    bus.insert(Recorder("pic"), 0x20, 2)
    assert bus.read(0x80, size) == expected


def test_unclaimed_write_is_dropped_and_reported(bus):
    pic = Recorder("pic")
    bus.insert(pic, 0x20, 2)
    assert bus.write(0x22, 1, 0x11) is False
    assert pic.log == []


def test_write_value_is_masked_to_access_size(bus):
    dev = Recorder("dev")
    bus.insert(dev, 0x70, 2)
    bus.write(0x70, 1, 0x1234)
    assert dev.log == [("w", 0, 1, 0x34)]


def test_overlap_is_refused_and_names_both_windows(bus):
    bus.insert(Recorder("uart"), 0x3F8, 8)
    with pytest.raises(BusConflict) as info:
        bus.insert(Recorder("rogue"), 0x3FF, 2)
    message = str(info.value)
    assert "rogue" in message and "uart" in message
    assert "0x3ff-0x400" in message and "0x3f8-0x3ff" in message
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("base, length", [(0x3F0, 9), (0x3FA, 1), (0x3F0, 0x20)])
def test_every_kind_of_overlap_is_refused(bus, base, length):
    bus.insert(Recorder("uart"), 0x3F8, 8)
    with pytest.raises(BusConflict):
        bus.insert(Recorder("other"), base, length)


def test_adjacent_windows_are_allowed(bus):
    low, high = Recorder("low"), Recorder("high")
    bus.insert(high, 0x22, 2)
    bus.insert(low, 0x20, 2)
    assert bus.lookup(0x21) == (low, 1)
    assert bus.lookup(0x22) == (high, 0)


def test_entries_are_sorted_by_base(bus):
    uart, pic, pit = Recorder("uart"), Recorder("pic"), Recorder("pit")
    bus.insert(uart, 0x3F8, 8)
    bus.insert(pic, 0x20, 2)
    bus.insert(pit, 0x40, 4)
    assert bus.entries() == [(0x20, 2, pic), (0x40, 4, pit), (0x3F8, 8, uart)]


def test_remove_frees_the_window(bus):
    uart = Recorder("uart")
    bus.insert(uart, 0x3F8, 8)
    bus.remove(uart)
    assert bus.read(0x3F8, 1) == 0xFF
    assert bus.entries() == []
    bus.insert(Recorder("uart2"), 0x3F8, 8)


def test_remove_unknown_device_fails(bus):
    with pytest.raises(KeyError):
        bus.remove(Recorder("ghost"))


def test_straddling_access_goes_to_device_with_starting_offset(bus):
    dev = Recorder("dev", value=0x12345678)
    bus.insert(dev, 0x40, 4)
    assert bus.read(0x43, 4) == 0x12345678
    assert dev.log == [("r", 3, 4)]


def test_access_starting_in_a_hole_is_unclaimed_even_if_it_ends_in_a_window(bus):
    dev = Recorder("dev")
    bus.insert(dev, 0x40, 4)
    assert bus.read(0x3F, 2) == 0xFFFF
    assert dev.log == []


def test_pio_space_ends_at_port_ffff():
    bus = Bus("pio")
    bus.insert(Recorder("top"), 0xFFFF, 1)
    with pytest.raises(ValueError):
        bus.insert(Recorder("past"), 0xFFF0, 0x20)


def test_mmio_lookup_over_many_windows():
    bus = Bus("mmio")
    devices = [Recorder(f"d{i}") for i in range(5)]
    for i, dev in enumerate(reversed(devices)):
        bus.insert(dev, 0xFEC0_0000 + (4 - i) * 0x1000, 0x100)
    assert bus.lookup(0xFEC0_20FF) == (devices[2], 0xFF)
    assert bus.lookup(0xFEC0_2100) is None
    assert bus.lookup(0xFEBF_FFFF) is None


def test_bad_kind_and_bad_window_are_refused():
    with pytest.raises(ValueError):
        Bus("isa")
    with pytest.raises(ValueError):
        Bus("pio").insert(Recorder("empty"), 0x80, 0)


def test_irq_line_drives_its_sink():
    events = []
    line = IrqLine(lambda irq, level: events.append((irq, level)), 4)
    line.raise_()
    line.lower()
    line.pulse()
    assert line.number == 4
    assert events == [(4, True), (4, False), (4, True), (4, False)]


@pytest.mark.parametrize("kind, size", [("pio", 3), ("pio", 8), ("pio", 0), ("mmio", 3)])
def test_an_access_of_a_size_no_instruction_makes_is_a_clear_error(kind, size):
    bus = Bus(kind)
    bus.insert(Recorder("dev"), 0x80, 8)
    for access in (lambda: bus.read(0x80, size), lambda: bus.write(0x80, size, 0),
                   lambda: bus.read(0x40, size)):
        with pytest.raises(BadAccessSize, match=f"{kind}: a {size}-byte access"):
            access()
