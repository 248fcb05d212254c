"""IDE channel through ports 0x1F0-0x1F7 / 0x3F6 on raw image files, without a CPU.

Protocols and values from ATA/ATAPI-6 (T13/1410D): PIO data-in/out (9.7, 9.8), status and error
bits (7.15, 7.9), IDENTIFY DEVICE words (8.15), signatures after reset (9.12); the access
pattern is xv6's ide.c (notes/pc-platform.md).
"""
import os
import tempfile

import pytest
from hypothesis import given, settings, strategies as st

from vmm.bus import Bus, IrqLine
from vmm.devices.ide import DiskImage, IdeChannel

SECTORS = 64
BSY, DRDY, DF, DSC, DRQ, ERR = 0x80, 0x40, 0x20, 0x10, 0x08, 0x01
ABRT, IDNF = 0x04, 0x10


def pattern(sectors, seed=0):
    return bytes((i * 7 + seed + (i >> 9)) & 0xFF for i in range(sectors * 512))


def make_image(directory, name="disk.img", sectors=SECTORS, extra=b"", seed=0):
    path = os.path.join(directory, name)
    with open(path, "wb") as f:
        f.write(pattern(sectors, seed) + extra)
    return path


class Host:
    def __init__(self, master=None, slave=None):
        self.irq = []
        self.channel = IdeChannel(IrqLine(lambda n, level: self.irq.append(level), 14),
                                  master, slave)
        self.bus = Bus("pio")
        self.bus.insert(self.channel, 0x1F0, 8)
        self.bus.insert(self.channel.control, 0x3F6, 1)

    def outb(self, port, value):
        self.bus.write(port, 1, value)

    def inb(self, port):
        return self.bus.read(port, 1)

    def issue(self, command, lba=0, count=1, drive=0):
        """xv6's idestart: count, LBA bytes, 0xE0 | drive << 4 | LBA 27:24, command."""
        self.outb(0x1F2, count & 0xFF)
        self.outb(0x1F3, lba & 0xFF)
        self.outb(0x1F4, lba >> 8 & 0xFF)
        self.outb(0x1F5, lba >> 16 & 0xFF)
        self.outb(0x1F6, 0xE0 | drive << 4 | lba >> 24 & 0xF)
        self.outb(0x1F7, command)

    def insl(self, dwords):
        return b"".join(self.bus.read(0x1F0, 4).to_bytes(4, "little") for _ in range(dwords))

    def insw(self, words):
        return b"".join(self.bus.read(0x1F0, 2).to_bytes(2, "little") for _ in range(words))

    def outsl(self, data):
        for i in range(0, len(data), 4):
            self.bus.write(0x1F0, 4, int.from_bytes(data[i:i + 4], "little"))


@pytest.fixture
def disk(tmp_path):
    return make_image(tmp_path)


@pytest.fixture
def host(disk):
    return Host(DiskImage(disk))


def test_power_on_status_and_signature(host):
    assert host.inb(0x1F7) == DRDY | DSC
    assert host.inb(0x1F1) == 0x01           # diagnostic code: device 0 passed
    assert [host.inb(p) for p in (0x1F2, 0x1F3, 0x1F4, 0x1F5)] == [1, 1, 0, 0]


def test_absent_slave_reads_status_zero_as_xv6_probes(host):
    host.outb(0x1F6, 0xE0 | 1 << 4)
    assert host.inb(0x1F7) == 0 and host.inb(0x3F6) == 0
    host.outb(0x1F7, 0xEC)                   # commands to an absent device are ignored
    assert host.irq == [] and host.inb(0x1F7) == 0


def test_identify_device_words(tmp_path):
    host = Host(DiskImage(make_image(tmp_path, sectors=20160)))
    host.issue(0xEC)
    assert host.inb(0x1F7) == DRDY | DSC | DRQ and host.irq == [True, False]
    data = host.insw(256)
    words = [int.from_bytes(data[i:i + 2], "little") for i in range(0, 512, 2)]
    assert words[0] == 0x0040
    assert (words[1], words[3], words[6]) == (20, 16, 63)     # 20160 = 20 * 16 * 63
    assert words[60] | words[61] << 16 == 20160
    assert words[49] & 0x0200                 # LBA supported
    model = bytes(data[54 + (i ^ 1)] for i in range(40))          # first character in 15:8
    assert model.decode().rstrip() == "TRAPVISOR HARDDISK" and data[54:56] == b"RT"
    assert data[510] == 0xA5 and sum(data) & 0xFF == 0          # word 255 checksum
    assert host.inb(0x1F7) == DRDY | DSC


def test_read_sectors_with_rep_insl(host, disk):
    host.issue(0x20, lba=5, count=2)
    assert host.irq == [True]
    assert host.inb(0x1F7) == DRDY | DSC | DRQ and host.irq == [True, False]
    first = host.insl(128)
    assert host.irq == [True, False, True]   # an interrupt for the second DRQ block
    assert host.inb(0x1F7) & DRQ
    second = host.insl(128)
    assert first + second == pattern(SECTORS)[5 * 512:7 * 512]
    assert host.inb(0x1F7) == DRDY | DSC


def test_write_sectors_reaches_the_file_and_nothing_else(host, disk):
    data = bytes(range(256)) * 4
    host.issue(0x30, lba=9, count=2)
    assert host.inb(0x1F7) == DRDY | DSC | DRQ and host.irq == []   # no interrupt before data
    host.outsl(data[:512])
    assert host.irq == [True]
    host.outsl(data[512:])
    assert host.inb(0x1F7) == DRDY | DSC
    with open(disk, "rb") as f:
        image = f.read()
    expected = bytearray(pattern(SECTORS))
    expected[9 * 512:11 * 512] = data
    assert image == bytes(expected)


def test_count_zero_means_256_sectors(tmp_path):
    host = Host(DiskImage(make_image(tmp_path, sectors=300)))
    host.issue(0x20, lba=10, count=0)
    data = b"".join(host.insl(128) for _ in range(256))
    assert data == pattern(300)[10 * 512:266 * 512]


def test_access_past_the_end_is_idnf_and_never_grows_the_file(tmp_path):
    path = make_image(tmp_path, extra=b"tail")           # a partial sector is not addressable
    host = Host(DiskImage(path))
    host.issue(0x30, lba=SECTORS - 1, count=2)
    assert host.inb(0x1F7) == DRDY | DSC | ERR and host.inb(0x1F1) == IDNF
    host.issue(0x20, lba=SECTORS, count=1)
    assert host.inb(0x1F1) == IDNF
    assert os.path.getsize(path) == SECTORS * 512 + 4


def test_unknown_command_aborts(host):
    host.issue(0xB0)                          # SMART: not offered
    assert host.inb(0x1F7) == DRDY | DSC | ERR and host.inb(0x1F1) == ABRT


def test_nien_masks_intrq_and_status_read_clears_it(host):
    host.outb(0x3F6, 0x02)
    host.issue(0x20, lba=0)
    assert host.irq == []
    assert host.inb(0x3F6) & DRQ and host.irq == []       # alternate status: no side effect
    host.outb(0x3F6, 0x00)
    assert host.irq == [True]                 # still pending: enabling shows it
    host.inb(0x1F7)
    assert host.irq == [True, False]


def test_srst_busy_then_signature_and_master_selected(tmp_path):
    host = Host(DiskImage(make_image(tmp_path)), DiskImage(make_image(tmp_path, "b.img")))
    host.outb(0x1F6, 0xF0)
    host.outb(0x3F6, 0x04)
    assert host.inb(0x3F6) == BSY
    host.outb(0x3F6, 0x00)
    assert host.channel.selected == 0 and host.inb(0x1F7) == DRDY | DSC
    assert host.inb(0x1F1) == 0x01 and host.inb(0x1F2) == 1 and host.inb(0x1F3) == 1


def test_slave_drive_is_separate(tmp_path):
    master = make_image(tmp_path, "a.img", seed=1)
    slave = make_image(tmp_path, "b.img", seed=2)
    host = Host(DiskImage(master), DiskImage(slave))
    host.issue(0x20, lba=3, drive=1)
    assert host.insl(128) == pattern(SECTORS, 2)[3 * 512:4 * 512]


def test_chs_addressing_through_the_default_geometry(tmp_path):
    host = Host(DiskImage(make_image(tmp_path, sectors=2 * 16 * 63)))
    host.outb(0x1F2, 1)
    host.outb(0x1F3, 2)                       # sector 2 (1-based)
    host.outb(0x1F4, 1)                       # cylinder 1
    host.outb(0x1F5, 0)
    host.outb(0x1F6, 0xA0 | 3)                # CHS, head 3
    host.outb(0x1F7, 0x20)
    lba = (1 * 16 + 3) * 63 + 1
    assert host.insl(128) == pattern(2 * 16 * 63)[lba * 512:(lba + 1) * 512]


def test_read_multiple_needs_set_multiple_then_moves_blocks(host):
    host.issue(0xC4, count=4)
    assert host.inb(0x1F1) == ABRT
    host.issue(0xC6, count=4)
    assert host.inb(0x1F7) == DRDY | DSC
    host.irq.clear()
    host.issue(0xC4, lba=1, count=6)
    host.inb(0x1F7)
    first = host.insl(4 * 128)
    assert host.irq == [True, False, True]    # second block announced after 4 sectors
    second = host.insl(2 * 128)
    assert first + second == pattern(SECTORS)[512:7 * 512]


def test_read_only_image_aborts_writes(disk):
    host = Host(DiskImage(disk, read_only=True))
    host.issue(0x30, lba=0)
    assert host.inb(0x1F1) == ABRT


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_write_read_round_trip_touches_only_the_addressed_sectors(data):
    lba = data.draw(st.integers(0, SECTORS - 1))
    count = data.draw(st.integers(1, SECTORS - lba))
    width = data.draw(st.sampled_from([2, 4]))
    payload = data.draw(st.binary(min_size=count * 512, max_size=count * 512))
    with tempfile.TemporaryDirectory() as directory:
        path = make_image(directory)
        host = Host(DiskImage(path))
        host.issue(0x30, lba=lba, count=count)
        for i in range(0, len(payload), width):
            host.bus.write(0x1F0, width, int.from_bytes(payload[i:i + width], "little"))
        assert host.inb(0x1F7) == DRDY | DSC
        host.issue(0x20, lba=lba, count=count)
        back = host.insw(count * 256) if width == 2 else host.insl(count * 128)
        assert back == payload
        with open(path, "rb") as f:
            image = f.read()
        original = pattern(SECTORS)
        assert image[:lba * 512] == original[:lba * 512]
        assert image[(lba + count) * 512:] == original[(lba + count) * 512:]
        host.channel.drives[0].image.close()
