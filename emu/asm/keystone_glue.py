"""keystone 0.9.2 glue: renders a resolved instruction as Intel syntax keystone accepts (with
placeholders that force NASM's full-width forms for labels), calls it through a cache, and
replaces its legacy prefixes where they differ from NASM's (notes/unicorn-x86.md section 8)."""

from __future__ import annotations

import keystone

from emu.asm.expressions import _PTR, _int_bytes
from emu.asm.operands import _BITS_KW, _CC, _REG_FAMILY, _Imm, _Mem, _Reg, _Resolved, _finish
from emu.asm.source import _Error
from emu.disasm import LEGACY_PREFIXES

_IMM_MARK = 0x5A3C  # placeholders that force keystone to use full-width immediate/displacement
_DISP_MARK = 0x4B2D
_ENGINES: dict[int, keystone.Ks] = {}
_KS_CACHE: dict[tuple[int, str], bytes | str] = {}
_NO_OPSIZE = {"lgdt", "lidt", "sgdt", "sidt"}  # keystone adds a 0x66 that truncates the base
_SIZELESS_MEMORY = {"jmp", "call", "lgdt", "lidt", "sgdt", "sidt", "invlpg", "lldt", "ltr", "lmsw",
                    "sldt", "str", "smsw", "verr", "verw", "lea", "nop", "fxsave", "fxrstor",
                    "clflush", "cmpxchg8b", *(f"set{cc}" for cc in _CC)}
_SELECTOR_SOURCE = {"lar", "lsl"}  # 'lar r32, r16' is 'lar r32, r32': keystone knows only that
_REG_GIVES_NO_SIZE = {"rol", "ror", "rcl", "rcr", "shl", "shr", "sal", "sar", "movzx", "movsx"}


def _ks_asm(bits: int, text: str) -> bytes:
    """keystone's encoding of one instruction, or _Error with keystone's complaint. Cached by
    (bits, text): nothing address-dependent reaches keystone (branches are encoded by hand)."""
    result = _KS_CACHE.get((bits, text))
    if result is None:
        result = _KS_CACHE[(bits, text)] = _ks_call(bits, text)
    if isinstance(result, str):
        raise _Error(result)
    return result


def _ks_call(bits: int, text: str) -> bytes | str:
    engine = _ENGINES.get(bits)
    if engine is None:
        mode = keystone.KS_MODE_16 if bits == 16 else keystone.KS_MODE_32
        engine = _ENGINES[bits] = keystone.Ks(keystone.KS_ARCH_X86, mode)
    try:
        code, count = engine.asm(text, 0, as_bytes=True)
    except keystone.KsError as err:
        if err.errno == keystone.KS_ERR_ASM_MNEMONICFAIL:
            return f"unknown mnemonic '{text.split()[0]}'"
        return f"invalid instruction '{text}' (keystone: {err})"
    if not code or count != 1:
        return f"keystone produced no encoding for '{text}'"
    return code


def _hex(value: int) -> str:
    return f"{value:#x}" if value >= 0 else f"-{-value:#x}"


def _memory_kw(ins: _Resolved) -> str | None:
    """The size a memory operand without a size keyword takes from the rest of the line."""
    sized = [op.kw for op in ins.ops if isinstance(op, _Imm) and op.kw]
    if sized:
        return sized[0]
    if ins.mnemonic in ("jmp", "call"):
        return _BITS_KW[ins.bits]
    dest = ins.ops[0]
    if ins.mnemonic in ("movzx", "movsx") and isinstance(dest, _Reg) and dest.width == 2:
        return "byte"  # NASM: the only source narrower than a 16-bit destination
    sized_by_reg = ins.mnemonic not in _REG_GIVES_NO_SIZE and any(
        isinstance(op, _Reg) for op in ins.ops)
    if not sized_by_reg and ins.mnemonic not in _SIZELESS_MEMORY:
        raise _Error("operation size not specified")
    return None


def _render(ins: _Resolved, wide: bool) -> tuple[str, list]:
    """Intel-syntax text for keystone. With `wide`, label-valued immediates and displacements
    that fit a byte become placeholders (patched later), so that keystone picks the full-width
    form NASM uses for relocatable values."""
    patches: list = []
    parts = [_render_operand(ins, op, wide, patches) for op in _keystone_operands(ins)]
    return f"{ins.mnemonic} {', '.join(parts)}".strip(), patches


def _keystone_operands(ins: _Resolved) -> tuple:
    """Register pairs spelled so that keystone produces NASM's encoding."""
    ops = ins.ops
    if len(ops) != 2 or not all(isinstance(op, _Reg) and op.kind == "gpr" for op in ops):
        return ops
    if ins.mnemonic == "xchg":
        return ops[::-1]  # NASM puts the first register in ModRM.reg, keystone the second
    if ins.mnemonic in _SELECTOR_SOURCE and ops[0].width == 4 and ops[1].width == 2:
        return ops[0], ops[1]._replace(name=_REG_FAMILY[ops[1].name], width=4)  # same bytes
    return ops


def _render_operand(ins: _Resolved, op: object, wide: bool, patches: list) -> str:
    if isinstance(op, _Reg):
        return op.name
    if isinstance(op, _Imm):
        if not -(1 << 31) <= op.value < (1 << 32):
            raise _Error(f"immediate {op.value:#x} does not fit in 32 bits")
        if wide and (op.reloc or "strict" in op.mods) and -128 <= op.value <= 127:
            patches.append(("imm", op.value, 0))
            return _hex(_IMM_MARK)
        return _hex(op.value)
    if isinstance(op, _Mem):
        return _render_memory(ins, op, wide, patches)
    raise _Error("a selector:offset operand is only valid for jmp and call")


def _render_memory(ins: _Resolved, op: _Mem, wide: bool, patches: list) -> str:
    if op.asize == 16:  # keystone adds a needless disp8 to [bp + si] but not to [si + bp]
        terms = [reg for reg in (op.index, op.base) if reg]
    else:
        terms = ([op.base] if op.base else []) + ([f"{op.index}*{op.scale}"] if op.index else [])
    disp = op.disp
    if wide and op.reloc and terms and -128 <= disp <= 127:
        patches.append(("disp", disp, op.asize // 8))
        disp = _DISP_MARK
    if disp or not terms:
        terms.append(_hex(disp))
    address = "[" + " + ".join(terms).replace("+ -", "- ") + "]"
    kw = op.kw or _memory_kw(ins)
    return f"{_PTR[kw]} ptr {address}" if kw else address


def _apply_patches(code: bytes, patches: list) -> bytes | None:
    for kind, value, width in patches:
        if kind == "imm":
            width = next((w for w in (4, 2) if code.endswith(_IMM_MARK.to_bytes(w, "little"))), 0)
            at = len(code) - width
        else:
            at = code.find(_DISP_MARK.to_bytes(width, "little"))
        if not width or at < 0:
            return None
        code = code[:at] + _int_bytes(value, width) + code[at + width:]
    return code


def _keystone_parts(ins: _Resolved) -> tuple[bytes, bytes]:
    """keystone's encoding split into its legacy prefixes and the rest."""
    text, patches = _render(ins, wide=True)
    code = _ks_asm(ins.bits, text)
    if patches:
        code = _apply_patches(code, patches) or _ks_asm(ins.bits, _render(ins, wide=False)[0])
    split = 0
    while split < len(code) and code[split] in LEGACY_PREFIXES:
        split += 1
    return code[:split], code[split:]


def _fixed_opsize(ins: _Resolved, opsize: bool) -> bool:
    """Where keystone's 0x66 differs from NASM's: lgdt & co. (a real bug) and mov with a
    segment register (NASM adds 0x66 only for 'mov r16/r32, sreg' of the other width)."""
    if ins.mnemonic in _NO_OPSIZE:
        return False
    if ins.mnemonic == "mov" and any(isinstance(op, _Reg) and op.kind == "sreg" for op in ins.ops):
        dest = ins.ops[0]
        return isinstance(dest, _Reg) and dest.kind == "gpr" and dest.width * 8 != ins.bits
    return opsize


def _keystone(ins: _Resolved) -> bytes:
    prefixes, body = _keystone_parts(ins)
    rep = next((p for p in prefixes if p in (0xF2, 0xF3)), None)
    return _finish(ins, body, _fixed_opsize(ins, 0x66 in prefixes), 0x67 in prefixes, rep)
