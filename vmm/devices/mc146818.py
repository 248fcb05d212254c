"""The Motorola MC146818A real-time clock and CMOS RAM (MC146818A datasheet) as the PC/AT wires
it: index port 0x70 (bit 7 masks NMI), data port 0x71, 128 bytes of which 0x00-0x0D are the
clock and status registers, and the IBM PC/AT CMOS layout (memory sizes, checksum, century).
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Callable

from vmm.snapshot.state import PlainState

SECONDS, SECONDS_ALARM, MINUTES, MINUTES_ALARM, HOURS, HOURS_ALARM = 0, 1, 2, 3, 4, 5
DAY_OF_WEEK, DAY_OF_MONTH, MONTH, YEAR = 6, 7, 8, 9
REG_A, REG_B, REG_C, REG_D = 0x0A, 0x0B, 0x0C, 0x0D
CENTURY = 0x32                         # IBM PC/AT convention
TIME_REGISTERS = (SECONDS, MINUTES, HOURS, DAY_OF_WEEK, DAY_OF_MONTH, MONTH, YEAR, CENTURY)

REG_A_UIP = 0x80
REG_A_DEFAULT = 0x26                   # DV = 010 (32.768 kHz time base), RS = 0110 (1024 Hz)
REG_B_SET, REG_B_DM_BINARY, REG_B_24H = 0x80, 0x04, 0x02
REG_D_VRT = 0x80                       # valid RAM and time
HOUR_PM = 0x80
NMI_DISABLE = 0x80

# IBM PC/AT CMOS memory size bytes (KiB, little endian) and the 0x10-0x2D checksum.
BASE_MEMORY, EXTENDED_MEMORY, EXTENDED_MEMORY_POST = 0x15, 0x17, 0x30
MEMORY_ABOVE_16M, MEMORY_ABOVE_4G = 0x34, 0x5B
CHECKSUM_HIGH, CHECKSUM_LOW = 0x2E, 0x2F
KIB, MIB, GIB = 1 << 10, 1 << 20, 1 << 30

WallTime = Callable[[], "datetime | float | int"]


def to_datetime(value: datetime | float | int) -> datetime:
    """The wall-time source's answer as a naive datetime: epoch seconds are taken as UTC."""
    if isinstance(value, datetime):
        return value.replace(tzinfo=None)
    return datetime.fromtimestamp(value, tz=timezone.utc).replace(tzinfo=None)


def memory_bytes(ram_size: int) -> dict[int, int]:
    """The CMOS bytes a PC BIOS stores for ``ram_size`` bytes of RAM (as QEMU's pc board
    does): base memory (640 KiB), extended memory above 1 MiB in KiB (at most 0xFFFF), memory
    between 16 MiB and 4 GiB in 64 KiB units (0x34/0x35), and above 4 GiB (0x5B-0x5D)."""
    base = min(ram_size, 640 * KIB) // KIB
    extended = min(max(ram_size - MIB, 0) // KIB, 0xFFFF)
    above_16m = min(max(min(ram_size, 4 * GIB) - 16 * MIB, 0) // (64 * KIB), 0xFFFF)
    above_4g = max(ram_size - 4 * GIB, 0) // (64 * KIB)
    values = {}
    for index, value, width in ((BASE_MEMORY, base, 2), (EXTENDED_MEMORY, extended, 2),
                                (EXTENDED_MEMORY_POST, extended, 2),
                                (MEMORY_ABOVE_16M, above_16m, 2), (MEMORY_ABOVE_4G, above_4g, 3)):
        for i in range(width):
            values[index + i] = value >> 8 * i & 0xFF
    return values


class Mc146818(PlainState):
    """RTC + CMOS behind a 2-port window (offset 0 index, offset 1 data).

    The time registers show ``wall_time()`` plus the offset the guest set by writing them;
    they are computed at each read, so an update never happens between reads and UIP always
    reads 0. While register B's SET bit is 1 the registers hold still for the guest to write;
    clearing it starts the clock from what was written (the day of week follows the date).
    Formats follow register B: BCD or binary (DM), 12 or 24 hour (bit 7 of the hour is PM).
    Not modelled: the periodic, alarm and update-ended interrupts (IRQ 8; register C reads 0),
    the square wave, daylight saving, the second 128-byte bank (0x72/0x73).
    The index port is write-only and reads 0xFF, as on the PC/AT.
    """
    STATE = ("index", "nmi_disabled", "ram", "offset")

    name = "mc146818"

    def __init__(self, wall_time: WallTime, ram_size: int = 0,
                 on_nmi_mask: Callable[[bool], None] | None = None) -> None:
        self._wall_time = wall_time
        self.on_nmi_mask = on_nmi_mask
        self.index = 0
        self.nmi_disabled = False
        self.ram = bytearray(128)
        self.ram[REG_A], self.ram[REG_B], self.ram[REG_D] = REG_A_DEFAULT, REG_B_24H, REG_D_VRT
        for index, value in memory_bytes(ram_size).items():
            self.ram[index] = value
        self.offset = timedelta(0)
        self._store_time(self.now())
        self.update_checksum()

    def update_checksum(self) -> None:
        """Bytes 0x2E (high) and 0x2F (low): the sum of bytes 0x10-0x2D."""
        total = sum(self.ram[0x10:CHECKSUM_HIGH])
        self.ram[CHECKSUM_HIGH], self.ram[CHECKSUM_LOW] = total >> 8 & 0xFF, total & 0xFF

    def now(self) -> datetime:
        return to_datetime(self._wall_time()) + self.offset

    # ----- the window ------------------------------------------------------------------------
    def read(self, offset: int, size: int) -> int:
        if offset == 0:
            return 0xFF
        index = self.index
        if index in TIME_REGISTERS and not self.ram[REG_B] & REG_B_SET:
            self._store_time(self.now())
        if index == REG_C:
            value, self.ram[REG_C] = self.ram[REG_C], 0
            return value
        if index == REG_A:
            return self.ram[REG_A] & ~REG_A_UIP
        return self.ram[index]

    def write(self, offset: int, size: int, value: int) -> None:
        value &= 0xFF
        if offset == 0:
            self.index = value & 0x7F
            disabled = bool(value & NMI_DISABLE)
            if disabled != self.nmi_disabled and self.on_nmi_mask is not None:
                self.on_nmi_mask(disabled)
            self.nmi_disabled = disabled
        elif self.index == REG_B:
            self._write_b(value)
        elif self.index in TIME_REGISTERS:
            self._write_time(self.index, value)
        elif self.index not in (REG_C, REG_D):
            self.ram[self.index] = value & ~REG_A_UIP if self.index == REG_A else value

    def _write_b(self, value: int) -> None:
        """SET 0 -> 1 freezes the time registers; 1 -> 0 starts the clock from them."""
        setting, was_setting = value & REG_B_SET, self.ram[REG_B] & REG_B_SET
        if setting and not was_setting:
            self._store_time(self.now())
        self.ram[REG_B] = value
        if was_setting and not setting:
            self._commit()

    def _write_time(self, index: int, value: int) -> None:
        if not self.ram[REG_B] & REG_B_SET:
            self._store_time(self.now())
        self.ram[index] = value
        if not self.ram[REG_B] & REG_B_SET:
            self._commit()

    def _commit(self) -> None:
        """The guest-set time becomes an offset from the wall; an impossible date is ignored."""
        try:
            stored = self._load_time()
        except ValueError:
            return
        self.offset = stored - to_datetime(self._wall_time())

    # ----- encoding --------------------------------------------------------------------------
    def _encode(self, value: int) -> int:
        return value if self.ram[REG_B] & REG_B_DM_BINARY else (value // 10) << 4 | value % 10

    def _decode(self, value: int) -> int:
        if self.ram[REG_B] & REG_B_DM_BINARY:
            return value
        return (value >> 4) * 10 + (value & 0xF)

    def _store_time(self, moment: datetime) -> None:
        ram, enc = self.ram, self._encode
        ram[SECONDS], ram[MINUTES] = enc(moment.second), enc(moment.minute)
        ram[HOURS] = self._encode_hour(moment.hour)
        ram[DAY_OF_WEEK] = enc(moment.isoweekday() % 7 + 1)        # 1 = Sunday
        ram[DAY_OF_MONTH], ram[MONTH] = enc(moment.day), enc(moment.month)
        ram[YEAR], ram[CENTURY] = enc(moment.year % 100), enc(moment.year // 100)

    def _encode_hour(self, hour: int) -> int:
        if self.ram[REG_B] & REG_B_24H:
            return self._encode(hour)
        return self._encode(hour % 12 or 12) | (HOUR_PM if hour >= 12 else 0)

    def _load_time(self) -> datetime:
        ram, dec = self.ram, self._decode
        hour = dec(ram[HOURS] & 0x7F)
        if not self.ram[REG_B] & REG_B_24H:
            hour = hour % 12 + (12 if ram[HOURS] & HOUR_PM else 0)
        return datetime(dec(ram[CENTURY]) * 100 + dec(ram[YEAR]), dec(ram[MONTH]),
                        dec(ram[DAY_OF_MONTH]), hour, dec(ram[MINUTES]), dec(ram[SECONDS]))
