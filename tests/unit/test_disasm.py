"""emu.disasm: decoding hand-written x86 encodings (Intel SDM) into Insn records, and the cache."""

import dataclasses
import time

import pytest

from emu import disasm
from emu.disasm import Disassembler, Insn, Mem, Operand


@pytest.fixture
def dis():
    return Disassembler()


def reg(name, size):
    return Operand("reg", size, reg=name)


def imm(value, size):
    return Operand("imm", size, imm=value)


def mem(size, base=None, index=None, scale=1, disp=0, segment=None):
    return Operand("mem", size, mem=Mem(segment, base, index, scale, disp))


# (bits, hex, mnemonic, op_str, operands, prefixes, opsize, addrsize)
DECODES = [
    (32, "0f22c0", "mov", "cr0, eax", (reg("cr0", 4), reg("eax", 4)), (), 32, 32),
    (16, "0f20c0", "mov", "eax, cr0", (reg("eax", 4), reg("cr0", 4)), (), 16, 16),
    (16, "66ea452301000800", "ljmp", "8:0x12345", (imm(8, 2), imm(0x12345, 4)), (0x66,), 32, 16),
    (32, "ea452301000800", "ljmp", "8:0x12345", (imm(8, 2), imm(0x12345, 4)), (), 32, 32),
    # capstone 5 reports the 16-bit far offset with size 4
    (16, "ea34120800", "ljmp", "8:0x1234", (imm(8, 2), imm(0x1234, 4)), (), 16, 16),
    (32, "0f011500500000", "lgdt", "[0x5000]", (mem(6, disp=0x5000),), (), 32, 32),
    (16, "0f01160050", "lgdt", "[0x5000]", (mem(6, disp=0x5000),), (), 16, 16),
    (32, "368b4500", "mov", "eax, dword ptr ss:[ebp]",
     (reg("eax", 4), mem(4, base="ebp", segment="ss")), (0x36,), 32, 32),
    (32, "8b4500", "mov", "eax, dword ptr [ebp]", (reg("eax", 4), mem(4, base="ebp")), (), 32, 32),
    (16, "8b46fe", "mov", "ax, word ptr [bp - 2]", (reg("ax", 2), mem(2, base="bp", disp=-2)),
     (), 16, 16),
    (32, "8d448b08", "lea", "eax, [ebx + ecx*4 + 8]",
     (reg("eax", 4), mem(4, "ebx", "ecx", 4, 8)), (), 32, 32),
    (32, "6aff", "push", "-1", (imm(0xFFFFFFFF, 4),), (), 32, 32),
    (16, "6aff", "push", "-1", (imm(0xFFFF, 2),), (), 16, 16),
    (32, "e460", "in", "al, 0x60", (reg("al", 1), imm(0x60, 1)), (), 32, 32),
    (32, "66ef", "out", "dx, ax", (reg("dx", 2), reg("ax", 2)), (0x66,), 16, 32),
    (16, "66ed", "in", "eax, dx", (reg("eax", 4), reg("dx", 2)), (0x66,), 32, 16),
    (32, "cd21", "int", "0x21", (imm(0x21, 1),), (), 32, 32),
    (32, "0f0138", "invlpg", "byte ptr [eax]", (mem(1, base="eax"),), (), 32, 32),
    (16, "67660f0110", "lgdt", "[eax]", (mem(6, base="eax"),), (0x67, 0x66), 32, 32),
    (32, "f3a5", "rep movsd", "dword ptr es:[edi], dword ptr [esi]",
     (mem(4, base="edi"), mem(4, base="esi")), (0xF3,), 32, 32),  # es: is implicit, not an override
    (32, "8ed8", "mov", "ds, eax", (reg("ds", 2), reg("eax", 4)), (), 32, 32),
    (32, "66cf", "iret", "", (), (0x66,), 16, 32),
    (16, "cf", "iret", "", (), (), 16, 16),
    (32, "cf", "iretd", "", (), (), 32, 32),
    (32, "0f32", "rdmsr", "", (), (), 32, 32),
    (32, "f4", "hlt", "", (), (), 32, 32),
    (16, "e8fdff", "call", "0x1000", (imm(0x1000, 2),), (), 16, 16),
    (32, "ebfe", "jmp", "0x1000", (imm(0x1000, 4),), (), 32, 32),
]


@pytest.mark.parametrize("bits,hexcode,mnemonic,op_str,operands,prefixes,opsize,addrsize",
                         DECODES)
def test_decode_fields(dis, bits, hexcode, mnemonic, op_str, operands, prefixes, opsize,
                       addrsize):
    raw = bytes.fromhex(hexcode)
    insn = dis.decode(raw + b"\x90\x90", 0x1000, bits)
    assert (insn.address, insn.size, insn.raw, insn.mnemonic) == (0x1000, len(raw), raw, mnemonic)
    assert (insn.prefixes, insn.opsize, insn.addrsize) == (prefixes, opsize, addrsize)
    assert insn.op_str == op_str
    assert str(insn) == f"{mnemonic} {op_str}".rstrip()
    assert insn.operands == operands


def test_prefix_order_is_the_byte_order(dis):
    insn = dis.decode(bytes.fromhex("f02666 67ff00".replace(" ", "")), 0, 16)
    assert insn.prefixes == (0xF0, 0x26, 0x66, 0x67)
    assert (insn.opsize, insn.addrsize) == (32, 32)
    assert insn.operands == (mem(4, base="eax", segment="es"),)


def test_undecodable_bytes_give_none(dis):
    assert dis.decode(b"\xff\xff", 0, 32) is None
    assert dis.decode(b"\x0f\x01", 0, 32) is None  # truncated
    assert dis.decode(b"", 0, 16) is None


def test_sixty_four_bit_rex_w(dis):
    insn = dis.decode(bytes.fromhex("48cf"), 0, 64)
    assert (insn.mnemonic, insn.opsize, insn.addrsize) == ("iretq", 64, 64)


def test_bad_mode_is_rejected(dis):
    with pytest.raises(ValueError):
        dis.decode(b"\x90", 0, 8)


def test_records_are_frozen(dis):
    insn = dis.decode(b"\x90", 0, 32)
    with pytest.raises(dataclasses.FrozenInstanceError):
        insn.size = 3
    with pytest.raises(dataclasses.FrozenInstanceError):
        Mem(None, "eax", None, 1, 0).disp = 4


def test_same_bytes_decode_differently_per_mode(dis):
    code = bytes.fromhex("b801000000")
    assert str(dis.decode(code, 0, 16)) == "mov ax, 1"
    assert dis.decode(code, 0, 16).size == 3
    assert str(dis.decode(code, 0, 32)) == "mov eax, 1"
    assert dis.decode(code, 0, 32).size == 5


def test_cache_returns_the_same_record(dis):
    first = dis.decode(b"\x0f\x22\xc0\x90", 0x5000, 32)
    assert dis.decode(b"\x0f\x22\xc0\xcc\xcc", 0x5000, 32) is first  # trailing bytes don't matter
    assert dis.decode(bytearray(b"\x0f\x22\xc0"), 0x5000, 32) is first
    assert dis.decode(b"\x0f\x22\xc0", 0x5001, 32) is not first  # other address


def test_cache_sees_new_bytes_at_an_address(dis):
    assert dis.decode(b"\x90", 0x7000, 32).mnemonic == "nop"
    assert dis.decode(b"\xf4", 0x7000, 32).mnemonic == "hlt"
    assert dis.decode(b"\x0f\x22\xc0", 0x7000, 32).mnemonic == "mov"


def test_cache_is_bounded(dis, monkeypatch):
    monkeypatch.setattr(disasm, "CACHE_LIMIT", 4)
    first = dis.decode(b"\x90", 0, 32)
    for address in range(1, 6):
        dis.decode(b"\x90", address, 32)
    assert dis.decode(b"\x90", 0, 32) is not first


def test_cache_hit_is_much_cheaper_than_a_decode(dis):
    code = bytes.fromhex("0f22c0")
    dis.decode(code, 0x1000, 32)
    rounds = 2000
    start = time.perf_counter()
    for _ in range(rounds):
        dis.decode(code, 0x1000, 32)
    hit = time.perf_counter() - start
    start = time.perf_counter()
    for address in range(rounds):
        dis.decode(code, 0x100000 + address, 32)
    miss = time.perf_counter() - start
    assert hit * 5 < miss


def test_disassemble_listing(dis):
    code = bytes.fromhex("fa" "0f0116" "0050" "66ea452301000800" "ffff")
    listing = dis.disassemble(code, 0x7C00, 16)
    assert [str(insn) for insn in listing] == ["cli", "lgdt [0x5000]", "ljmp 8:0x12345"]
    assert [insn.address for insn in listing] == [0x7C00, 0x7C01, 0x7C06]
    assert listing[2].raw == bytes.fromhex("66ea452301000800")
    assert [str(insn) for insn in dis.disassemble(code, 0x7C00, 16, count=2)] == [
        "cli", "lgdt [0x5000]"]


def test_insn_type(dis):
    assert isinstance(dis.decode(b"\x90", 0, 16), Insn)
