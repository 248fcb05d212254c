"""QEMU pc-testdev ports and scratch memory, checked against hw/misc/pc-testdev.c semantics."""
from vmm.bus import Bus, IrqLine
from vmm.devices.pc_testdev import (TestdevFlush, TestdevIomem, TestdevIoport, TestdevIrq,
                                    IOMEM_BASE, IOMEM_LEN)


def board():
    events, flushed = [], []
    ioport = TestdevIoport()
    lines = {n: IrqLine(lambda n, level: events.append((n, level)), n) for n in range(16)}
    pio, mmio = Bus("pio"), Bus("mmio")
    pio.insert(ioport, 0xE0, 4)
    pio.insert(TestdevFlush(flushed.append), 0xE4, 4)
    pio.insert(ioport, 0xE8, 4)
    pio.insert(TestdevIrq(lines), 0x2000, 24)
    mmio.insert(TestdevIomem(), IOMEM_BASE, IOMEM_LEN)
    return pio, mmio, events, flushed


def test_read_back_register_at_each_width():
    pio, _, _, _ = board()
    pio.write(0xE0, 4, 0xDEADBEEF)
    assert pio.read(0xE0, 4) == 0xDEADBEEF
    assert pio.read(0xE0, 2) == 0xBEEF and pio.read(0xE2, 2) == 0xDEAD
    assert pio.read(0xE1, 1) == 0xBE and pio.read(0xE3, 1) == 0xDE
    pio.write(0xE1, 1, 0x12)                 # replaces byte 1 only
    assert pio.read(0xE0, 4) == 0xDEAD12EF
    pio.write(0xE2, 2, 0x3456)
    assert pio.read(0xE0, 4) == 0x345612EF


def test_unaligned_dword_keeps_the_bytes_inside_the_register():
    pio, _, _, _ = board()
    pio.write(0xE0, 4, 0x11223344)
    pio.write(0xE1, 4, 0xAABBCCDD)           # bytes 1-3 <- DD CC BB; AA falls off
    assert pio.read(0xE0, 4) == 0xBBCCDD44
    assert pio.read(0xE1, 4) == 0xBBCCDD


def test_byte_window_at_0xe8_shares_the_register():
    pio, _, _, _ = board()
    pio.write(0xE8, 4, 0x01020304)
    assert pio.read(0xE0, 4) == 0x01020304 and pio.read(0xEA, 1) == 0x02


def test_irq_lines_raise_on_nonzero_and_lower_on_zero():
    pio, _, events, _ = board()
    pio.write(0x2004, 1, 1)
    pio.write(0x2004, 1, 0x80)
    pio.write(0x2004, 1, 0)
    pio.write(0x2014, 1, 1)                  # line 20 is not wired on this board
    assert events == [(4, True), (4, True), (4, False)]
    assert pio.read(0x2004, 1) == 0


def test_flush_port_passes_the_page():
    pio, _, _, flushed = board()
    pio.write(0xE4, 4, 0x00123ABC)
    pio.write(0xE4, 1, 0x55)                 # only 4-byte writes are valid
    assert flushed == [0x00123000]


def test_iomem_scratch_reads_back():
    _, mmio, _, _ = board()
    assert mmio.read(IOMEM_BASE + 0x100, 4) == 0
    mmio.write(IOMEM_BASE + 0x100, 8, 0x0102030405060708)
    assert mmio.read(IOMEM_BASE + 0x104, 4) == 0x01020304
    assert mmio.read(IOMEM_BASE + 0x100, 1) == 0x08
    mmio.write(IOMEM_BASE + IOMEM_LEN - 2, 4, 0xAABBCCDD)
    assert mmio.read(IOMEM_BASE + IOMEM_LEN - 2, 4) == 0xCCDD
