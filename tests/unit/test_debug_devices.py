"""isa-debug-exit, the port 0xE9 console and the null benchmark device through the port bus."""
from vmm.bus import Bus
from vmm.devices.debug import DebugConsole, DebugExit, NullDevice


def make_bus():
    bus = Bus("pio")
    statuses, console = [], bytearray()
    exit_device, null = DebugExit(statuses.append), NullDevice()
    bus.insert(exit_device, 0xF4, 4)
    bus.insert(DebugConsole(console.extend), 0xE9, 1)
    bus.insert(null, 0x80, 1)
    return bus, statuses, console, null


def test_debug_exit_byte_write_passes_low_byte():
    bus, statuses, _, _ = make_bus()
    bus.write(0xF4, 1, 0x31)
    assert statuses == [0x31]


def test_debug_exit_wide_writes_pass_the_full_value():
    bus, statuses, _, _ = make_bus()
    bus.write(0xF4, 2, 0x1234)
    bus.write(0xF4, 4, 0xDEADBEEF)
    assert statuses == [0x1234, 0xDEADBEEF]


def test_debug_exit_reads_all_ones():
    bus, _, _, _ = make_bus()
    assert bus.read(0xF4, 1) == 0xFF
    assert bus.read(0xF4, 4) == 0xFFFFFFFF


def test_debug_console_prints_bytes_and_identifies_itself():
    bus, _, console, _ = make_bus()
    for byte in b"ok\n":
        bus.write(0xE9, 1, byte)
    assert bytes(console) == b"ok\n"
    assert bus.read(0xE9, 1) == 0xE9


def test_null_device_counts_accesses():
    bus, _, _, null = make_bus()
    bus.write(0x80, 1, 0x12)
    bus.write(0x80, 1, 0x34)
    assert bus.read(0x80, 1) == 0
    assert (null.reads, null.writes) == (1, 2)
