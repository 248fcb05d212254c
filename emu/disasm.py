"""Capstone front end: decodes x86 machine code into immutable `Insn` records (mnemonic, typed
operands, legacy prefixes, effective operand and address size), with a decode cache so that exit
handlers can re-decode the trapping instruction for a fraction of a microsecond."""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

import capstone
from capstone import x86_const

LEGACY_PREFIXES = frozenset((0x26, 0x2E, 0x36, 0x3E, 0x64, 0x65, 0x66, 0x67, 0xF0, 0xF2, 0xF3))
SEGMENT_PREFIXES = frozenset((0x26, 0x2E, 0x36, 0x3E, 0x64, 0x65))
MAX_INSN_LEN = 15
CACHE_LIMIT = 1 << 16
_MODES = {16: capstone.CS_MODE_16, 32: capstone.CS_MODE_32, 64: capstone.CS_MODE_64}


@dataclass(frozen=True)
class Mem:
    """A memory operand; `segment` is set only when a segment-override prefix is present."""

    segment: str | None
    base: str | None
    index: str | None
    scale: int
    disp: int


@dataclass(frozen=True)
class Operand:
    """One decoded operand. `size` is in bytes; `imm` is unsigned, masked to `size`."""

    kind: str
    size: int
    reg: str | None = None
    imm: int | None = None
    mem: Mem | None = None


@dataclass(frozen=True)
class Insn:
    """One decoded instruction. `opsize`/`addrsize` are the mode default toggled by 0x66/0x67
    (64 for REX.W or 64-bit addressing in 64-bit mode)."""

    address: int
    size: int
    raw: bytes
    mnemonic: str
    op_str: str
    operands: tuple[Operand, ...]
    prefixes: tuple[int, ...]
    opsize: int
    addrsize: int

    def __str__(self) -> str:
        return f"{self.mnemonic} {self.op_str}".rstrip()


def _leading_prefixes(raw: bytes) -> tuple[int, ...]:
    count = 0
    while count < len(raw) and raw[count] in LEGACY_PREFIXES:
        count += 1
    return tuple(raw[:count])


def _sizes(bits: int, prefixes: tuple[int, ...], rex: int) -> tuple[int, int]:
    if bits == 64:
        opsize = 64 if rex & 0x08 else (16 if 0x66 in prefixes else 32)
        return opsize, 32 if 0x67 in prefixes else 64
    other = 48 - bits
    return (other if 0x66 in prefixes else bits), (other if 0x67 in prefixes else bits)


def _register_names() -> tuple[str | None, ...]:
    engine = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_32)
    return (None,) + tuple(engine.reg_name(reg) for reg in range(1, x86_const.X86_REG_ENDING))


_REG_NAMES = _register_names()


def _operand(op, has_segment: bool) -> Operand:
    kind, size, value = op.type, op.size, op.value
    if kind == x86_const.X86_OP_REG:
        return Operand("reg", size, reg=_REG_NAMES[value.reg])
    if kind == x86_const.X86_OP_IMM:
        return Operand("imm", size, imm=value.imm & ((1 << (8 * size)) - 1))
    m = value.mem
    segment = _REG_NAMES[m.segment] if has_segment else None
    return Operand("mem", size, mem=Mem(segment, _REG_NAMES[m.base], _REG_NAMES[m.index],
                                        m.scale, m.disp))


def _convert(cs_insn, raw: bytes, bits: int) -> Insn:
    """Build an Insn from a raw `cs_insn` ctypes record and the instruction's bytes."""
    detail = cs_insn.detail.contents.arch.x86
    prefixes = _leading_prefixes(raw)
    has_segment = not SEGMENT_PREFIXES.isdisjoint(prefixes)
    operands = tuple(_operand(detail.operands[k], has_segment) for k in range(detail.op_count))
    opsize, addrsize = _sizes(bits, prefixes, detail.rex)
    return Insn(cs_insn.address, len(raw), raw, cs_insn.mnemonic.decode(),
                cs_insn.op_str.decode(), operands, prefixes, opsize, addrsize)


def _cs_decode(engine: capstone.Cs, code: bytes, address: int, bits: int,
               count: int) -> list[Insn]:
    """Call cs_disasm directly and read the C records: going through the binding's CsInsn
    objects costs ~4x more per instruction (capstone 5 Python binding internals)."""
    records = ctypes.POINTER(capstone._cs_insn)()
    found = capstone._cs.cs_disasm(engine.csh, code, len(code), address, count,
                                   ctypes.byref(records))
    try:
        insns = []
        for k in range(found):
            record = records[k]
            start = record.address - address
            insns.append(_convert(record, code[start:start + record.size], bits))
        return insns
    finally:
        if found:
            capstone._cs.cs_free(records, found)


class Disassembler:
    """Decodes 16/32/64-bit x86 code with capstone (detail mode). Single decodes are cached per
    (bits, address) and reused while the bytes at that address still start with the cached
    instruction's bytes (a decode depends on nothing else); a mode's cache is emptied when it
    reaches CACHE_LIMIT entries. Undecodable bytes are not cached."""

    def __init__(self) -> None:
        self._engines: dict[int, capstone.Cs] = {}
        self._caches: dict[int, dict[int, Insn]] = {bits: {} for bits in _MODES}

    def _engine(self, bits: int) -> capstone.Cs:
        engine = self._engines.get(bits)
        if engine is None:
            if bits not in _MODES:
                raise ValueError(f"bits must be 16, 32 or 64, not {bits}")
            engine = capstone.Cs(capstone.CS_ARCH_X86, _MODES[bits])
            engine.detail = True
            self._engines[bits] = engine
        return engine

    def decode(self, code: bytes | bytearray, address: int, bits: int) -> Insn | None:
        """The instruction at the start of `code`, or None if the bytes do not decode."""
        cache = self._caches.get(bits)
        insn = cache.get(address) if cache is not None else None
        if insn is not None and code.startswith(insn.raw):
            return insn
        found = _cs_decode(self._engine(bits), bytes(code[:MAX_INSN_LEN]), address, bits, 1)
        if not found:
            return None
        insn = found[0]
        if len(cache) >= CACHE_LIMIT:
            cache.clear()
        cache[address] = insn
        return insn

    def disassemble(self, code: bytes, address: int, bits: int,
                    count: int | None = None) -> list[Insn]:
        """Linear decode of `code` (at most `count` instructions), stopping at undecodable bytes."""
        return _cs_decode(self._engine(bits), bytes(code), address, bits, count or 0)
