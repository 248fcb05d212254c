"""An IDE (ATA) channel in PIO mode with up to two drives (ATA/ATAPI-6, T13/1410D): the command
block registers (0x1F0-0x1F7 on the primary channel), the control block (device control /
alternate status at 0x3F6), IDENTIFY DEVICE and LBA28/CHS sector reads and writes on raw images.
"""
from __future__ import annotations

import os

from vmm.bus import IrqLine, all_ones
from vmm.snapshot.state import PlainState, StateError

SECTOR = 512
LBA28_LIMIT = 1 << 28
DATA, ERROR, SECTOR_COUNT, LBA_LOW, LBA_MID, LBA_HIGH, DEVICE, STATUS = range(8)
FEATURES, COMMAND = ERROR, STATUS

STATUS_BSY, STATUS_DRDY, STATUS_DF, STATUS_DSC, STATUS_DRQ, STATUS_ERR = (
    0x80, 0x40, 0x20, 0x10, 0x08, 0x01)
ERROR_IDNF, ERROR_ABRT = 0x10, 0x04
DIAGNOSTIC_PASSED = 0x01
DEVICE_DEV, DEVICE_LBA = 0x10, 0x40
CONTROL_NIEN, CONTROL_SRST = 0x02, 0x04

CMD_READ_SECTORS, CMD_READ_SECTORS_NORETRY = 0x20, 0x21
CMD_WRITE_SECTORS, CMD_WRITE_SECTORS_NORETRY = 0x30, 0x31
CMD_READ_VERIFY, CMD_READ_VERIFY_NORETRY = 0x40, 0x41
CMD_EXECUTE_DIAGNOSTIC, CMD_INITIALIZE_PARAMETERS = 0x90, 0x91
CMD_READ_MULTIPLE, CMD_WRITE_MULTIPLE, CMD_SET_MULTIPLE = 0xC4, 0xC5, 0xC6
CMD_FLUSH_CACHE, CMD_IDENTIFY, CMD_SET_FEATURES = 0xE7, 0xEC, 0xEF
MAX_MULTIPLE = 16
READY = STATUS_DRDY | STATUS_DSC


class DiskImage:
    """A raw image file seen as whole 512-byte sectors; a trailing partial sector is not
    addressable, and no read or write ever reaches past the last whole sector."""

    def __init__(self, path: str | os.PathLike, read_only: bool = False) -> None:
        self.read_only = read_only
        self._fd = os.open(path, os.O_RDONLY if read_only else os.O_RDWR)
        self.sectors = os.fstat(self._fd).st_size // SECTOR

    def _check(self, lba: int, count: int) -> None:
        if lba < 0 or count < 0 or lba + count > self.sectors:
            raise ValueError(f"sectors {lba}+{count} outside an image of {self.sectors}")

    def read(self, lba: int, count: int) -> bytes:
        self._check(lba, count)
        return os.pread(self._fd, count * SECTOR, lba * SECTOR)

    def write(self, lba: int, data: bytes) -> None:
        self._check(lba, -(-len(data) // SECTOR))
        if self.read_only:
            raise PermissionError("read-only image")
        os.pwrite(self._fd, data, lba * SECTOR)

    def flush(self) -> None:
        if not self.read_only:
            os.fsync(self._fd)

    def close(self) -> None:
        os.close(self._fd)


def ata_string(text: str, length: int) -> bytes:
    """An IDENTIFY string field: space padded, two characters per word, first in bits 15:8."""
    raw = text.encode("ascii")[:length].ljust(length, b" ")
    return bytes(raw[i ^ 1] for i in range(length))


def default_geometry(sectors: int) -> tuple[int, int, int]:
    """The usual translated CHS geometry: 16 heads, 63 sectors per track, at most 16383
    cylinders (ATA-6 Annex B)."""
    return min(sectors // (16 * 63), 16383), 16, 63


class IdeDrive(PlainState):
    """One ATA device: its image, identity and per-device registers (both devices of a channel
    latch every command block write; reads come from the selected one)."""
    STATE = ("heads", "spt", "multiple", "regs", "error", "status", "buffer", "position",
             "writing", "remaining", "lba", "block")

    def __init__(self, image, model: str = "TRAPVISOR HARDDISK", serial: str = "TV0001") -> None:
        self.image = image
        self.model, self.serial = model, serial
        self.cylinders, self.default_heads, self.default_spt = default_geometry(image.sectors)
        self.heads, self.spt = self.default_heads, self.default_spt
        self.multiple = 0
        self.regs = [0] * 8
        self.reset()

    def reset(self) -> None:
        """Power-on / SRST: the ATA signature (count 1, LBA 1/0/0), diagnostic code 01h."""
        self.regs[SECTOR_COUNT:DEVICE + 1] = [1, 1, 0, 0, 0]
        self.error = DIAGNOSTIC_PASSED
        self.status = READY
        self.buffer = b""
        self.position = 0
        self.writing = False
        self.remaining = 0
        self.lba = 0
        self.block = 1

    def identify(self) -> bytes:
        """512 bytes of IDENTIFY DEVICE data (ATA-6 section 8.15, table 26)."""
        words = [0] * 256
        sectors28 = min(self.image.sectors, LBA28_LIMIT - 1)
        current = min(self.cylinders * self.heads * self.spt, sectors28)
        words[0] = 0x0040                                  # fixed device
        words[1], words[3], words[6] = self.cylinders, self.default_heads, self.default_spt
        words[47] = 0x8000 | MAX_MULTIPLE
        words[49] = 0x0200                                 # LBA supported, no DMA
        words[50] = 0x4000
        words[53] = 0x0003                                 # words 54-58 and 64-70 valid
        words[54:59] = [self.cylinders, self.heads, self.spt, current & 0xFFFF, current >> 16]
        words[59] = 0x0100 | self.multiple if self.multiple else 0
        words[60], words[61] = sectors28 & 0xFFFF, sectors28 >> 16
        words[64] = 0x0003                                 # PIO modes 3 and 4
        words[80] = 0x007E                                 # ATA-1 to ATA-6
        words[83], words[84], words[86], words[87] = 0x5000, 0x4000, 0x1000, 0x4000
        data = bytearray(b"".join(w.to_bytes(2, "little") for w in words))
        data[20:40] = ata_string(self.serial, 20)
        data[46:54] = ata_string("1.0", 8)
        data[54:94] = ata_string(self.model, 40)
        data[510] = 0xA5                                   # word 255: signature + checksum
        data[511] = -sum(data[:511]) & 0xFF
        return bytes(data)


class IdeChannel(PlainState):
    """One channel: the 8-port command block window (this object) and the 1-port control block
    window (``self.control``). INTRQ goes to ``irq`` (IRQ 14 on the primary channel) as a level:
    raised when a device requests an interrupt and nIEN is clear, lowered by a status read.

    Commands complete at once (BSY is never seen except during SRST). A selected but absent
    drive reads status 0 (device 0 answers for a missing device 1, ATA-6 9.16.1; QEMU does the
    same) and ignores commands; a channel without drives should not be put on the bus at all,
    so it floats (0xFF). Not modelled: LBA48, DMA, ATAPI, power management, 8-bit transfers.
    """

    name = "ide"

    STATE = ("device_control", "selected", "_intrq", "_irq_level")

    def __init__(self, irq: IrqLine, master=None, slave=None) -> None:
        self._irq = irq
        self.drives = [None if image is None else IdeDrive(image) for image in (master, slave)]
        self.control = IdeControl(self)
        self.device_control = 0
        self.selected = 0
        self._intrq = False
        self._irq_level = False

    def save_state(self) -> dict:
        return {**super().save_state(),
                "drives": [None if d is None else d.save_state() for d in self.drives]}

    def load_state(self, state: dict) -> None:
        super().load_state(state)
        for drive, saved in zip(self.drives, state["drives"], strict=True):
            if (drive is None) != (saved is None):
                raise StateError("the saved IDE channel has other drives attached")
            if drive is not None:
                drive.load_state(saved)

    def drive(self) -> IdeDrive | None:
        return self.drives[self.selected]

    # ----- the command block -----------------------------------------------------------------
    def read(self, offset: int, size: int) -> int:
        drive = self.drive()
        if offset == DATA:
            return self._read_data(drive, size) if drive is not None else all_ones(size)
        if offset == STATUS:
            self._set_intrq(False)
        return self.status_of(drive) if offset == STATUS else self._read_register(drive, offset)

    def _read_register(self, drive: IdeDrive | None, offset: int) -> int:
        """Device 0 answers register reads for an absent device 1 (status aside)."""
        answering = drive or self.drives[0] or self.drives[1]
        if answering is None:
            return 0
        return answering.error if offset == ERROR else answering.regs[offset]

    def status_of(self, drive: IdeDrive | None) -> int:
        if drive is None:
            return 0
        return STATUS_BSY if self.device_control & CONTROL_SRST else drive.status

    def write(self, offset: int, size: int, value: int) -> None:
        if offset == DATA:
            drive = self.drive()
            if drive is not None:
                self._write_data(drive, size, value)
        elif offset == COMMAND:
            self._command(value & 0xFF)
        else:
            if offset == DEVICE:
                self.selected = 1 if value & DEVICE_DEV else 0
            for drive in self.drives:
                if drive is not None:
                    drive.regs[offset] = value & 0xFF

    def write_control(self, value: int) -> None:
        """Device control: nIEN gates INTRQ; SRST held high resets both devices on release."""
        resetting = self.device_control & CONTROL_SRST
        self.device_control = value & (CONTROL_NIEN | CONTROL_SRST)
        if resetting and not value & CONTROL_SRST:
            self._reset_drives()
            self._intrq = False
        self._update_irq()

    def _set_intrq(self, pending: bool) -> None:
        self._intrq = pending
        self._update_irq()

    def _update_irq(self) -> None:
        level = self._intrq and not self.device_control & CONTROL_NIEN
        if level != self._irq_level:
            self._irq_level = level
            self._irq.raise_() if level else self._irq.lower()

    # ----- commands --------------------------------------------------------------------------
    def _command(self, command: int) -> None:
        drive = self.drive()
        if command == CMD_EXECUTE_DIAGNOSTIC:
            self._diagnostic()
            return
        if drive is None or self.device_control & CONTROL_SRST:
            return
        drive.buffer, drive.remaining, drive.writing = b"", 0, False
        handler = self._COMMANDS.get(command)
        if handler is None:
            self._fail(drive, ERROR_ABRT)
        else:
            handler(self, drive, command)

    def _complete(self, drive: IdeDrive) -> None:
        drive.status, drive.error = READY, 0
        self._set_intrq(True)

    def _fail(self, drive: IdeDrive, error: int) -> None:
        drive.status, drive.error = READY | STATUS_ERR, error
        drive.buffer, drive.remaining = b"", 0
        self._set_intrq(True)

    def _reset_drives(self) -> None:
        """SRST and EXECUTE DEVICE DIAGNOSTIC: signatures in both devices, device 0 selected."""
        for drive in self.drives:
            if drive is not None:
                drive.reset()
        self.selected = 0

    def _diagnostic(self) -> None:
        self._reset_drives()
        self._set_intrq(True)

    def _identify(self, drive: IdeDrive, command: int) -> None:
        self._start_in(drive, drive.identify(), 0)

    def _sectors(self, drive: IdeDrive, command: int) -> None:
        """READ/WRITE SECTORS and MULTIPLE, READ VERIFY: check the whole range up front."""
        multiple = command in (CMD_READ_MULTIPLE, CMD_WRITE_MULTIPLE)
        if multiple and not drive.multiple:
            self._fail(drive, ERROR_ABRT)
            return
        count = drive.regs[SECTOR_COUNT] or 256
        lba = self._address(drive)
        if lba is None or lba + count > drive.image.sectors:
            self._fail(drive, ERROR_IDNF)
            return
        writing = command in (CMD_WRITE_SECTORS, CMD_WRITE_SECTORS_NORETRY, CMD_WRITE_MULTIPLE)
        if writing and getattr(drive.image, "read_only", False):
            self._fail(drive, ERROR_ABRT)
            return
        drive.lba, drive.remaining = lba, count
        drive.block = drive.multiple if multiple else 1
        if command in (CMD_READ_VERIFY, CMD_READ_VERIFY_NORETRY):
            self._complete(drive)
        elif writing:
            self._next_out_block(drive, first=True)
        else:
            self._next_in_block(drive)

    def _address(self, drive: IdeDrive) -> int | None:
        """LBA28 from the task file, or CHS through the current logical geometry."""
        regs = drive.regs
        if regs[DEVICE] & DEVICE_LBA:
            return (regs[DEVICE] & 0xF) << 24 | regs[LBA_HIGH] << 16 | regs[LBA_MID] << 8 \
                | regs[LBA_LOW]
        cylinder, head, sector = regs[LBA_HIGH] << 8 | regs[LBA_MID], regs[DEVICE] & 0xF, \
            regs[LBA_LOW]
        if not sector or sector > drive.spt or head >= drive.heads:
            return None
        return (cylinder * drive.heads + head) * drive.spt + sector - 1

    def _set_multiple(self, drive: IdeDrive, command: int) -> None:
        count = drive.regs[SECTOR_COUNT]
        if count > MAX_MULTIPLE or count & (count - 1):
            self._fail(drive, ERROR_ABRT)
            return
        drive.multiple = count
        self._complete(drive)

    def _initialize_parameters(self, drive: IdeDrive, command: int) -> None:
        spt = drive.regs[SECTOR_COUNT]
        if not spt:
            self._fail(drive, ERROR_ABRT)
            return
        drive.heads, drive.spt = (drive.regs[DEVICE] & 0xF) + 1, spt
        self._complete(drive)

    def _flush(self, drive: IdeDrive, command: int) -> None:
        drive.image.flush()
        self._complete(drive)

    def _accept(self, drive: IdeDrive, command: int) -> None:
        """SET FEATURES and RECALIBRATE: nothing to change in this model."""
        self._complete(drive)

    # ----- PIO data transfers ----------------------------------------------------------------
    def _start_in(self, drive: IdeDrive, data: bytes, remaining: int) -> None:
        """PIO data-in: DRQ and an interrupt at the start of every block (ATA-6 9.7)."""
        drive.buffer, drive.position, drive.writing = data, 0, False
        drive.remaining = remaining
        drive.status, drive.error = READY | STATUS_DRQ, 0
        self._set_intrq(True)

    def _next_in_block(self, drive: IdeDrive) -> None:
        count = min(drive.block, drive.remaining)
        data = drive.image.read(drive.lba, count)
        drive.lba += count
        self._start_in(drive, data, drive.remaining - count)

    def _read_data(self, drive: IdeDrive, size: int) -> int:
        if drive.writing or drive.position >= len(drive.buffer):
            return all_ones(size)
        chunk = drive.buffer[drive.position:drive.position + size]
        drive.position += size
        if drive.position >= len(drive.buffer):
            if drive.remaining:
                self._next_in_block(drive)
            else:
                drive.buffer, drive.status = b"", READY
        return int.from_bytes(chunk.ljust(size, b"\xff"), "little")

    def _next_out_block(self, drive: IdeDrive, first: bool = False) -> None:
        """PIO data-out: DRQ for the next block; an interrupt for every block after the first."""
        drive.buffer = bytearray(min(drive.block, drive.remaining) * SECTOR)
        drive.position, drive.writing = 0, True
        drive.status, drive.error = READY | STATUS_DRQ, 0
        if not first:
            self._set_intrq(True)

    def _write_data(self, drive: IdeDrive, size: int, value: int) -> None:
        if not drive.writing or drive.position >= len(drive.buffer):
            return
        room = len(drive.buffer) - drive.position
        data = value.to_bytes(size, "little")[:room]
        drive.buffer[drive.position:drive.position + len(data)] = data
        drive.position += len(data)
        if drive.position < len(drive.buffer):
            return
        drive.image.write(drive.lba, bytes(drive.buffer))
        blocks = len(drive.buffer) // SECTOR
        drive.lba += blocks
        drive.remaining -= blocks
        if drive.remaining:
            self._next_out_block(drive)
        else:
            drive.buffer, drive.writing = b"", False
            self._complete(drive)

    _COMMANDS = {CMD_IDENTIFY: _identify, CMD_READ_SECTORS: _sectors,
                 CMD_READ_SECTORS_NORETRY: _sectors, CMD_WRITE_SECTORS: _sectors,
                 CMD_WRITE_SECTORS_NORETRY: _sectors, CMD_READ_VERIFY: _sectors,
                 CMD_READ_VERIFY_NORETRY: _sectors, CMD_READ_MULTIPLE: _sectors,
                 CMD_WRITE_MULTIPLE: _sectors, CMD_SET_MULTIPLE: _set_multiple,
                 CMD_INITIALIZE_PARAMETERS: _initialize_parameters, CMD_FLUSH_CACHE: _flush,
                 CMD_SET_FEATURES: _accept,
                 **dict.fromkeys(range(0x10, 0x20), _accept)}      # RECALIBRATE


class IdeControl(PlainState):
    """The control block window (0x3F6): alternate status (no interrupt side effect) on read,
    device control on write."""
    STATE = ()

    name = "ide-control"

    def __init__(self, channel: IdeChannel) -> None:
        self._channel = channel

    def read(self, offset: int, size: int) -> int:
        return self._channel.status_of(self._channel.drive())

    def write(self, offset: int, size: int, value: int) -> None:
        self._channel.write_control(value)
