"""x86 operands and instructions as the encoders see them: registers, immediates, memory
operands (NASM's effective-address rules), far pointers, condition-code names, and the
legacy prefixes in the order NASM emits them."""

from __future__ import annotations

from typing import NamedTuple

from emu.asm.expressions import _GPRS, _SREGS, _Ctx, _Val, _eval, _signed
from emu.asm.source import _Error

_CONDITIONS = ("o", "no", "b", "ae", "e", "ne", "be", "a", "s", "ns", "p", "np", "l", "ge",
               "le", "g")
_CC = {**{cc: cc for cc in _CONDITIONS}, "c": "b", "nae": "b", "nb": "ae", "nc": "ae", "z": "e",
       "nz": "ne", "na": "be", "nbe": "a", "pe": "p", "po": "np", "nge": "l", "nl": "ge",
       "ng": "le", "nle": "g"}
_REG_FAMILY = {reg: "e" + reg for reg, width in _GPRS.items() if width == 2}
_BITS_KW = {16: "word", 32: "dword"}


class _OpSpec(NamedTuple):
    """A parsed operand: form is 'expr', 'mem' (seg = override name) or 'far' (seg = selector)."""

    form: str
    kw: str | None
    mods: frozenset[str]
    expr: tuple
    seg: object


class _Reg(NamedTuple):
    name: str
    width: int
    kind: str  # 'gpr' | 'sreg' | 'other'


class _Imm(NamedTuple):
    value: int
    reloc: bool
    known: bool
    kw: str | None
    mods: frozenset[str]


class _Mem(NamedTuple):
    seg: str | None
    base: str | None
    index: str | None
    scale: int
    disp: int
    reloc: bool
    asize: int
    kw: str | None
    mods: frozenset[str]


class _Far(NamedTuple):
    sel: int
    off: int
    kw: str | None


def _resolve(spec: _OpSpec, ctx: _Ctx, bits: int) -> _Reg | _Imm | _Mem | _Far:
    if spec.form == "far":
        return _resolve_far(spec, ctx)
    value = _eval(spec.expr, ctx)
    if spec.form == "mem":
        return _resolve_mem(spec, value, bits)
    if value.regs:
        return _resolve_reg(value)
    return _Imm(value.value, bool(value.reloc), value.known, spec.kw, spec.mods)


def _resolve_reg(value: _Val) -> _Reg:
    if len(value.regs) != 1 or value.regs[0][1] != 1 or value.value or value.reloc:
        raise _Error("invalid use of a register in an expression")
    name = value.regs[0][0]
    if name in _GPRS:
        return _Reg(name, _GPRS[name], "gpr")
    return _Reg(name, 2 if name in _SREGS else 4, "sreg" if name in _SREGS else "other")


def _resolve_far(spec: _OpSpec, ctx: _Ctx) -> _Far:
    sel, off = _eval(spec.seg, ctx), _eval(spec.expr, ctx)
    if sel.regs or off.regs:
        raise _Error("a far pointer is selector:offset with constant parts")
    if not 0 <= sel.value <= 0xFFFF and sel.known:
        raise _Error(f"segment selector {sel.value:#x} does not fit in 16 bits")
    return _Far(sel.value & 0xFFFF, off.value, spec.kw)


def _resolve_mem(spec: _OpSpec, value: _Val, bits: int) -> _Mem:
    base, index, scale = _effective_address(value.regs)
    asize = _address_size(base, index, bits)
    if asize == 16 and index in ("bx", "bp"):
        base, index = index, base
    limit = 1 << asize
    if not -(limit >> 1) <= value.value < limit:
        raise _Error(f"displacement {value.value:#x} does not fit {asize}-bit addressing")
    disp = _signed(value.value, asize // 8) if base or index else value.value & (limit - 1)
    return _Mem(spec.seg, base, index, scale, disp, bool(value.reloc), asize, spec.kw, spec.mods)


def _effective_address(regs: tuple) -> tuple[str | None, str | None, int]:
    """NASM's rules: first scale-1 register is the base; reg*2/3/5/9 split into base+index."""
    if not regs:
        return None, None, 1
    if len(regs) == 1:
        reg, coef = regs[0]
        if coef in (1, 2, 3, 5, 9):
            return (reg, None, 1) if coef == 1 else _no_esp_index(reg, reg, coef - 1)
        if coef in (4, 8):
            return None, reg, coef
    elif len(regs) == 2:
        (first, c1), (second, c2) = regs
        if c1 == 1 and c2 in (1, 2, 4, 8):
            return _no_esp_index(first, second, c2)
        if c2 == 1 and c1 in (2, 4, 8):
            return _no_esp_index(second, first, c1)
    raise _Error("invalid effective address")


def _no_esp_index(base: str, index: str, scale: int) -> tuple[str, str, int]:
    if index == "esp":
        if scale != 1 or base == "esp":
            raise _Error("esp cannot be an index register")
        return index, base, 1
    return base, index, scale


def _address_size(base: str | None, index: str | None, bits: int) -> int:
    regs = [reg for reg in (base, index) if reg]
    widths = {_GPRS.get(reg) for reg in regs}
    if not regs:
        return bits
    if widths == {4}:
        return 32
    bases, indexes = {"bx", "bp"} & set(regs), {"si", "di"} & set(regs)
    if widths == {2} and len(bases) + len(indexes) == len(regs) and max(len(bases),
                                                                         len(indexes)) == 1:
        return 16
    raise _Error("invalid effective address")


class _Prefixes(NamedTuple):
    lock: bool = False
    rep: int | None = None
    seg: str | None = None
    osize: int | None = None
    asize: int | None = None


class _Resolved(NamedTuple):
    """An instruction with operand values for one pass, at its address."""

    bits: int
    mnemonic: str
    pre: _Prefixes
    ops: tuple
    address: int
    key: tuple
    text: str


def _segment(ins: _Resolved) -> str | None:
    segs = {op.seg for op in ins.ops if isinstance(op, _Mem) and op.seg} | (
        {ins.pre.seg} if ins.pre.seg else set())
    if len(segs) > 1:
        raise _Error("conflicting segment overrides")
    return segs.pop() if segs else None


def _finish(ins: _Resolved, body: bytes, opsize: bool, addrsize: bool,
            rep: int | None = None) -> bytes:
    """Prepend the legacy prefixes in NASM's order: lock, rep, segment, 0x66, 0x67."""
    pre, out = ins.pre, bytearray()
    if pre.lock:
        out.append(0xF0)
    if pre.rep or rep:
        out.append(pre.rep or rep)
    seg = _segment(ins)
    if seg:
        out.append(_SREGS[seg])
    if (pre.osize != ins.bits) if pre.osize else opsize:
        out.append(0x66)
    if (pre.asize != ins.bits) if pre.asize else addrsize:
        out.append(0x67)
    return bytes(out) + body
