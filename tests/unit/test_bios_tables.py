"""PC firmware state (vmm/pc/bios.py): the BIOS data area, the Intel MP Specification 1.4
tables read back by a parser written from the spec's layout (section 4) and by a transcription
of xv6's mp.c, the memory map, the 8259 initialisation, and booting sector 0 of a disk."""
from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from vmm.pc import bios
from vmm.pc.bios import DiskImageError, MpConfig, boot_disk, install_firmware_tables
from vmm.pc.handover import BootError

MiB = 1 << 20
XV6_IMAGE = Path("/work/shared/xv6/xv6.img")


class FakeMemory:
    def __init__(self, size: int = 2 * MiB, fill: int = 0xCC):
        self.size = size
        self.ram = bytearray([fill]) * size

    def write(self, addr: int, data: bytes) -> None:
        assert 0 <= addr and addr + len(data) <= self.size
        self.ram[addr:addr + len(data)] = data

    def read(self, addr: int, length: int) -> bytes:
        return bytes(self.ram[addr:addr + length])

    def u8(self, addr): return self.ram[addr]
    def u16(self, addr): return struct.unpack_from("<H", self.ram, addr)[0]
    def u32(self, addr): return struct.unpack_from("<I", self.ram, addr)[0]


@pytest.fixture
def mem() -> FakeMemory:
    memory = FakeMemory()
    install_firmware_tables(memory)
    return memory


# ----- an MP table parser written from the MP Specification 1.4 -------------------------------------
@dataclass
class MpTables:
    floating_addr: int
    floating: dict
    header: dict
    entries: list[dict]


ENTRY_LAYOUTS = {   # type: (length, struct format after the type byte, field names)
    0: (20, "<BBBII8x", ("apic_id", "apic_version", "cpu_flags", "cpu_signature", "features")),
    1: (8, "<B6s", ("bus_id", "bus_type")),
    2: (8, "<BBBI", ("apic_id", "apic_version", "flags", "address")),
    3: (8, "<BHBBBB", ("int_type", "flags", "src_bus", "src_irq", "dst_apic", "dst_pin")),
    4: (8, "<BHBBBB", ("int_type", "flags", "src_bus", "src_irq", "dst_apic", "dst_pin")),
}


def find_floating_pointer(mem: FakeMemory) -> int | None:
    """Section 4: the first KiB of the EBDA, else the last KiB of base memory, then the BIOS ROM
    0xF0000-0xFFFFF; 16-byte aligned, signature and checksum over length * 16 bytes."""
    ebda = mem.u16(0x40E) << 4
    areas = [(ebda, 1024)] if ebda else [(mem.u16(0x413) * 1024 - 1024, 1024)]
    areas.append((0xF0000, 0x10000))
    for start, length in areas:
        for p in range(start, start + length, 16):
            if mem.read(p, 4) == b"_MP_":
                size = mem.u8(p + 8) * 16
                if size and sum(mem.read(p, size)) % 256 == 0:
                    return p
    return None


def parse_mp(mem: FakeMemory) -> MpTables:
    fp = find_floating_pointer(mem)
    assert fp is not None, "no MP floating pointer structure"
    sig, phys, length, rev, checksum, f1, f2 = struct.unpack_from("<4sIBBBBB", mem.ram, fp)
    assert fp % 16 == 0 and length == 1 and rev == 4
    assert sum(mem.read(fp, 16)) % 256 == 0
    assert mem.read(fp + 12, 4) == bytes(4)                   # feature bytes 2-5 reserved
    floating = dict(physaddr=phys, feature1=f1, feature2=f2)
    (sig, base_len, spec_rev, checksum, oem, product, oem_ptr, oem_size, count, lapic, ext_len,
     ext_checksum, reserved) = struct.unpack_from("<4sHBB8s12sIHHIHBB", mem.ram, phys)
    assert sig == b"PCMP" and spec_rev == 4
    assert sum(mem.read(phys, base_len)) % 256 == 0           # base table checksum
    assert ext_len == 0 and ext_checksum == 0 and reserved == 0
    header = dict(length=base_len, oem_id=oem, product_id=product, oem_table=oem_ptr,
                  oem_table_size=oem_size, entry_count=count, lapic_address=lapic)
    entries, p, end = [], phys + 44, phys + base_len
    while p < end:
        kind = mem.u8(p)
        size, fmt, names = ENTRY_LAYOUTS[kind]
        values = struct.unpack_from(fmt, mem.ram, p + 1)
        entries.append(dict(type=kind, **dict(zip(names, values))))
        p += size
    assert p == end, "the entries do not end exactly at the base table length"
    assert len(entries) == count
    types = [e["type"] for e in entries]
    assert types == sorted(types), "entries must be ordered by type"
    return MpTables(fp, floating, header, entries)


def xv6_mpinit(mem: FakeMemory) -> tuple[int, list[int], int, int]:
    """xv6-public mp.c, mpsearch/mpconfig/mpinit, transcribed: (ncpu, apicids, ioapicid, lapic)."""
    bda = 0x400
    p = ((mem.u8(bda + 0x0F) << 8) | mem.u8(bda + 0x0E)) << 4

    def search1(a, length):
        for q in range(a, a + length, 16):
            if mem.read(q, 4) == b"_MP_" and sum(mem.read(q, 16)) % 256 == 0:
                return q
        return None

    mp = None
    if p:
        mp = search1(p, 1024)
    else:
        p = ((mem.u8(bda + 0x14) << 8) | mem.u8(bda + 0x13)) * 1024
        mp = search1(p - 1024, 1024)
    mp = mp or search1(0xF0000, 0x10000)
    if mp is None or mem.u32(mp + 4) == 0:
        raise AssertionError('panic("Expect to run on an SMP")')
    conf = mem.u32(mp + 4)
    if mem.read(conf, 4) != b"PCMP" or mem.u8(conf + 6) not in (1, 4):
        raise AssertionError('panic("Expect to run on an SMP")')
    if sum(mem.read(conf, mem.u16(conf + 4))) % 256:
        raise AssertionError('panic("Expect to run on an SMP")')
    lapic = mem.u32(conf + 36)
    apicids, ioapicid = [], None
    q, e = conf + 44, conf + mem.u16(conf + 4)
    while q < e:
        kind = mem.u8(q)
        if kind == 0:            # MPPROC
            apicids.append(mem.u8(q + 1))
            q += 20
        elif kind == 2:          # MPIOAPIC
            ioapicid = mem.u8(q + 1)
            q += 8
        elif kind in (1, 3, 4):  # MPBUS, MPIOINTR, MPLINTR
            q += 8
        else:
            raise AssertionError('panic("Didn\'t find a suitable machine")')
    return len(apicids), apicids, ioapicid, lapic


# ----- MP tables -------------------------------------------------------------------------------------
def test_mp_tables_parse_back_as_the_spec_lays_them_out(mem):
    mp = parse_mp(mem)
    assert mp.floating_addr == bios.MP_FLOATING_ADDR
    assert mp.floating == dict(physaddr=bios.MP_CONFIG_ADDR, feature1=0, feature2=0)
    h = mp.header
    assert h["lapic_address"] == 0xFEE00000
    assert h["oem_id"] == b"TRAPVSR " and h["product_id"] == b"TRAPVISOR PC"
    assert h["oem_table"] == 0 and h["oem_table_size"] == 0
    by_type = {t: [e for e in mp.entries if e["type"] == t] for t in range(5)}

    (cpu,) = by_type[0]
    assert cpu["apic_id"] == 0 and cpu["cpu_flags"] == 0x03       # enabled, BSP
    assert cpu["apic_version"] == bios.LAPIC_VERSION
    (bus,) = by_type[1]
    assert bus["bus_id"] == 0 and bus["bus_type"] == b"ISA   "
    (ioapic,) = by_type[2]
    assert ioapic == dict(type=2, apic_id=0, apic_version=0x11, flags=1, address=0xFEC00000)

    routes = {e["src_irq"]: e["dst_pin"] for e in by_type[3]}
    assert routes == {0: 2, **{irq: irq for irq in range(1, 16) if irq != 2}}
    for e in by_type[3]:
        assert e["int_type"] == 0 and e["src_bus"] == 0 and e["dst_apic"] == ioapic["apic_id"]
        assert e["flags"] == 0                                     # conforms to ISA
    lint0, lint1 = by_type[4]
    assert (lint0["int_type"], lint0["dst_apic"], lint0["dst_pin"]) == (3, 0, 0)      # ExtINT
    assert (lint1["int_type"], lint1["dst_apic"], lint1["dst_pin"]) == (1, 0xFF, 1)   # NMI
    assert h["length"] == 44 + 20 + 8 + 8 + 15 * 8 + 2 * 8


def test_xv6_mp_c_accepts_the_tables(mem):
    ncpu, apicids, ioapicid, lapic = xv6_mpinit(mem)
    assert ncpu == 1 and apicids == [0]
    assert ioapicid == 0 and lapic == 0xFEE00000


def test_xv6_finds_the_tables_in_the_f_segment_when_the_ebda_is_empty(mem):
    """The EBDA's first KiB holds no floating pointer; the search falls through to 0xF0000."""
    assert bios.MP_FLOATING_ADDR >= 0xF0000
    assert b"_MP_" not in mem.read(bios.EBDA_BASE, 1024)


@settings(max_examples=40, deadline=None)
@given(lapic_id=st.integers(0, 254), ioapic_id=st.integers(0, 254),
       lapic_version=st.integers(0x10, 0x15), signature=st.integers(0, 2**32 - 1))
def test_generated_configurations_round_trip(lapic_id, ioapic_id, lapic_version, signature):
    memory = FakeMemory()
    config = MpConfig(lapic_id=lapic_id, ioapic_id=ioapic_id, lapic_version=lapic_version,
                      cpu_signature=signature)
    install_firmware_tables(memory, mp=config)
    mp = parse_mp(memory)
    cpu = mp.entries[0]
    assert (cpu["apic_id"], cpu["apic_version"], cpu["cpu_signature"]) == (
        lapic_id, lapic_version, signature)
    assert [e["apic_id"] for e in mp.entries if e["type"] == 2] == [ioapic_id]
    assert {e["dst_apic"] for e in mp.entries if e["type"] == 3} == {ioapic_id}
    assert [e["dst_apic"] for e in mp.entries if e["type"] == 4] == [lapic_id, 0xFF]
    assert xv6_mpinit(memory)[1:3] == ([lapic_id], ioapic_id)


def test_table_builders_checksum_to_zero():
    table = bios.build_mp_config_table()
    assert sum(table) % 256 == 0 and struct.unpack_from("<H", table, 4)[0] == len(table)
    fp = bios.build_mp_floating_pointer(0x12345)
    assert len(fp) == 16 and sum(fp) % 256 == 0 and fp[:4] == b"_MP_"


# ----- BIOS data area ------------------------------------------------------------------------------
def test_bios_data_area(mem):
    assert mem.u16(0x400) == 0x3F8                     # COM1
    assert mem.read(0x402, 6) == bytes(6)              # no COM2-4
    assert mem.u16(0x40E) == 0x9FC0                    # EBDA segment
    assert mem.u16(0x413) == 639                       # base memory, KiB
    equipment = mem.u16(0x410)
    assert equipment == 0x0222
    assert (equipment >> 9) & 7 == 1                   # one serial port
    assert (equipment >> 4) & 3 == 0b10                # 80x25 colour
    assert equipment & 2 and not equipment & 1         # FPU, no floppy
    assert mem.u8(0x449) == 3 and mem.u16(0x44A) == 80 and mem.u16(0x463) == 0x3D4
    assert mem.u8(0x475) == 1                          # one hard disk
    assert mem.u8(0x9FC00) == 1                        # EBDA size, KiB
    # EBDA + base memory describe the same boundary
    assert mem.u16(0x40E) << 4 == mem.u16(0x413) * 1024


def test_firmware_needs_a_megabyte():
    with pytest.raises(BootError, match="1 MiB"):
        install_firmware_tables(FakeMemory(512 * 1024))


# ----- memory map -------------------------------------------------------------------------------------
@pytest.mark.parametrize("ram", [1 * MiB, 2 * MiB, 256 * MiB])
def test_memory_map(ram):
    entries = bios.memory_map(ram)
    assert entries[:3] == [(0, 0x9FC00, 1), (0x9FC00, 0x400, 2), (0xF0000, 0x10000, 2)]
    assert entries[3:] == ([(0x100000, ram - MiB, 1)] if ram > MiB else [])
    ends = [(base, base + length) for base, length, _ in entries]
    assert all(a[1] <= b[0] for a, b in zip(ends, ends[1:]))
    assert not any(base < 0xF0000 and base + length > 0xA0000 for base, length, _ in entries)


# ----- 8259 programming --------------------------------------------------------------------------------
def test_pic_init_sequence_leaves_the_bios_vector_bases():
    from vmm.bus import Bus
    from vmm.devices.pic8259 import Pic8259Pair

    pic = Pic8259Pair()
    bus = Bus("pio")
    bus.insert(pic.master, 0x20, 2)
    bus.insert(pic.slave, 0xA0, 2)
    for port, value in bios.PIC_INIT_SEQUENCE:
        bus.write(port, 1, value)
    assert pic.master.vector_base == 0x08 and pic.slave.vector_base == 0x70
    assert bus.read(0x21, 1) == 0xB8 and bus.read(0xA1, 1) == 0x8E
    pic.set_irq(0, True)
    assert pic.acknowledge() == 0x08
    bus.write(0x20, 1, 0x20)                            # EOI
    pic.set_irq(14, True)
    assert pic.acknowledge() == 0x76


# ----- booting from disk ----------------------------------------------------------------------------
def disk(sector0: bytes = b"\xFA\xF4", size: int = 4096, signature: bytes = b"\x55\xAA") -> bytes:
    image = bytearray(size)
    image[:len(sector0)] = sector0
    if size >= 512:
        image[510:512] = signature
    image[512:] = b"\xEE" * (size - 512) if size > 512 else b""
    return bytes(image)


def test_boot_sector_is_loaded_and_entered_like_a_bios():
    memory = FakeMemory()
    image = disk()
    h = boot_disk(memory, image)
    assert memory.read(0x7C00, 512) == image[:512]
    assert memory.u8(0x7C00 + 512) == 0xCC            # only sector 0
    assert h.mode == "real" and h.eip == 0x7C00 and not h.cr0 & 1
    assert h.registers["edx"] & 0xFF == 0x80
    assert h.registers["esp"] == 0x7C00
    for name, seg in h.segments.items():
        assert seg.selector == 0 and seg.base == 0 and seg.limit == 0xFFFF
        assert not seg.flags & (1 << 22)                # 16-bit
    assert not h.eflags & (1 << 9)
    parse_mp(memory)                                    # the firmware tables are there too
    assert memory.u16(0x413) == 639


def test_boot_sector_from_a_path_reads_only_sector_0(tmp_path):
    path = tmp_path / "disk.img"
    path.write_bytes(disk(size=1 << 20))
    memory = FakeMemory()
    h = boot_disk(memory, path)
    assert memory.read(0x7C00, 512) == path.read_bytes()[:512]
    assert str(path) in h.notes[0]


def test_disk_shorter_than_a_sector():
    with pytest.raises(DiskImageError, match="shorter than one 512-byte sector"):
        boot_disk(FakeMemory(), b"\x55\xAA" * 100)


def test_disk_without_boot_signature():
    with pytest.raises(DiskImageError, match=r"no boot signature \(bytes 510-511 are 00 00"):
        boot_disk(FakeMemory(), disk(signature=b"\0\0"))
    with pytest.raises(DiskImageError, match="AA 55"):
        boot_disk(FakeMemory(), disk(signature=b"\xAA\x55"))


def test_missing_disk_file(tmp_path):
    with pytest.raises(DiskImageError, match="nope.img"):
        boot_disk(FakeMemory(), tmp_path / "nope.img")


@pytest.mark.skipif(not XV6_IMAGE.is_file(), reason="xv6.img not present")
def test_xv6_boot_sector():
    memory = FakeMemory(4 * MiB)
    h = boot_disk(memory, XV6_IMAGE)
    assert memory.read(0x7C00, 512) == XV6_IMAGE.read_bytes()[:512]
    assert h.eip == 0x7C00
    assert xv6_mpinit(memory)[:2] == (1, [0])
