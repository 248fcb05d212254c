"""MC146818A RTC/CMOS at 0x70/0x71 against an injected wall time, without a CPU.

Register formats from the MC146818A datasheet (Table 3 "Time, calendar and alarm data modes",
registers A-D); memory-size bytes as the IBM PC/AT CMOS map and QEMU's pc board define them.
"""
from datetime import datetime

import pytest

from vmm.bus import Bus
from vmm.devices.mc146818 import Mc146818, memory_bytes


class Wall:
    def __init__(self, moment):
        self.moment = moment

    def __call__(self):
        return self.moment


class Board:
    def __init__(self, moment=datetime(2024, 2, 29, 21, 7, 5), ram_size=256 << 20, **kw):
        self.wall = Wall(moment)
        self.rtc = Mc146818(self.wall, ram_size, **kw)
        self.bus = Bus("pio")
        self.bus.insert(self.rtc, 0x70, 2)

    def cmos(self, index):
        self.bus.write(0x70, 1, index)
        return self.bus.read(0x71, 1)

    def set(self, index, value):
        self.bus.write(0x70, 1, index)
        self.bus.write(0x71, 1, value)


@pytest.fixture
def b():
    return Board()


def test_bcd_24h_time_registers(b):
    # 2024-02-29 21:07:05, a Thursday (day of week 5 with Sunday = 1)
    values = [b.cmos(i) for i in (0, 2, 4, 6, 7, 8, 9, 0x32)]
    assert values == [0x05, 0x07, 0x21, 0x05, 0x29, 0x02, 0x24, 0x20]


def test_status_registers_power_on(b):
    assert b.cmos(0x0A) == 0x26 and b.cmos(0x0B) == 0x02
    assert b.cmos(0x0C) == 0x00 and b.cmos(0x0D) == 0x80
    assert b.bus.read(0x70, 1) == 0xFF       # the index port is write-only


def test_binary_mode(b):
    b.set(0x0B, 0x06)                        # DM binary, 24 hour
    assert [b.cmos(i) for i in (0, 2, 4, 9)] == [5, 7, 21, 24]


def test_12_hour_mode_sets_pm_bit(b):
    b.set(0x0B, 0x00)                        # BCD, 12 hour
    assert b.cmos(4) == 0x80 | 0x09          # 21h = 9 PM
    b.wall.moment = datetime(2024, 3, 1, 0, 30)
    assert b.cmos(4) == 0x12                 # 00:30 = 12 AM


def test_time_follows_the_wall_source(b):
    b.wall.moment = datetime(2024, 2, 29, 23, 59, 59)
    assert b.cmos(0) == 0x59
    b.wall.moment = datetime(2024, 3, 1, 0, 0, 0)
    assert [b.cmos(i) for i in (0, 4, 7, 8)] == [0x00, 0x00, 0x01, 0x03]


def test_epoch_seconds_source():
    board = Board(moment=0)
    assert [board.cmos(i) for i in (9, 8, 7, 0x32)] == [0x70, 0x01, 0x01, 0x19]


def test_set_bit_freezes_then_guest_time_runs_from_the_wall(b):
    b.set(0x0B, 0x82)                        # SET
    b.wall.moment = datetime(2024, 2, 29, 21, 7, 30)
    assert b.cmos(0) == 0x05                 # frozen
    for index, value in ((0, 0x00), (2, 0x00), (4, 0x10), (7, 0x01), (8, 0x01), (9, 0x99),
                         (0x32, 0x19)):
        b.set(index, value)
    b.set(0x0B, 0x02)                        # run: 1999-01-01 10:00:00 at wall 21:07:30
    b.wall.moment = datetime(2024, 2, 29, 21, 8, 0)
    assert [b.cmos(i) for i in (0, 2, 4, 9, 0x32)] == [0x30, 0x00, 0x10, 0x99, 0x19]
    assert b.cmos(6) == 0x06                 # 1999-01-01 was a Friday


def test_direct_time_write_moves_only_that_field(b):
    b.set(2, 0x45)                           # minutes
    assert [b.cmos(i) for i in (0, 2, 4)] == [0x05, 0x45, 0x21]


def test_uip_never_reads_set_and_register_a_keeps_other_bits(b):
    b.set(0x0A, 0xA6)
    assert b.cmos(0x0A) == 0x26


def test_nmi_disable_bit_is_index_bit_7():
    seen = []
    board = Board(on_nmi_mask=seen.append)
    board.bus.write(0x70, 1, 0x80 | 0x0D)
    assert board.rtc.nmi_disabled and seen == [True]
    assert board.bus.read(0x71, 1) == 0x80   # index 0x0D still selected
    board.bus.write(0x70, 1, 0x0D)
    assert seen == [True, False]


def test_memory_size_bytes_for_256_mib(b):
    assert b.cmos(0x15) | b.cmos(0x16) << 8 == 640
    assert b.cmos(0x17) | b.cmos(0x18) << 8 == 0xFFFF      # 255 MiB in KiB saturates
    assert b.cmos(0x30) | b.cmos(0x31) << 8 == 0xFFFF
    assert b.cmos(0x34) | b.cmos(0x35) << 8 == (256 - 16) * 16     # 64 KiB units


def test_memory_size_bytes_small_and_large():
    small = memory_bytes(32 << 20)
    assert small[0x17] | small[0x18] << 8 == 31 * 1024
    assert small[0x34] | small[0x35] << 8 == 16 * 16
    large = memory_bytes(6 << 30)
    assert large[0x5B] | large[0x5C] << 8 | large[0x5D] << 16 == (2 << 30) // 65536
    assert large[0x34] | large[0x35] << 8 == (4096 - 16) * 16     # capped at 4 GiB


def test_checksum_covers_0x10_to_0x2d(b):
    total = sum(b.cmos(i) for i in range(0x10, 0x2E))
    assert b.cmos(0x2E) << 8 | b.cmos(0x2F) == total


def test_general_nvram_bytes_hold_values(b):
    b.set(0x40, 0x5A)
    b.set(0x7F, 0xA5)
    assert b.cmos(0x40) == 0x5A and b.cmos(0x7F) == 0xA5
    b.set(0x0D, 0x00)                        # register D is read-only
    assert b.cmos(0x0D) == 0x80
