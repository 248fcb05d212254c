"""Hand encodings for what keystone gets wrong or cannot know (bare and sized one-byte forms,
returns, NASM's short/near branch choice, far jumps and calls, push/pop of segment registers,
push imm), and the dispatch that sends every other instruction to keystone."""

from __future__ import annotations

from emu.asm.expressions import _SIZE_BYTES, _Ctx, _int_bytes, _signed
from emu.asm.keystone_glue import _keystone, _keystone_parts
from emu.asm.operands import (_BITS_KW, _CC, _CONDITIONS, _Far, _Imm, _Mem, _Reg, _Resolved,
                              _finish)
from emu.asm.source import _Error


def _table(spec: str) -> dict[str, tuple[bytes, int | None]]:
    """'mnemonic hex width' triples; width is the operand size the form implies, '-' for none."""
    words = spec.split()
    return {words[i]: (bytes.fromhex(words[i + 1]), None if words[i + 2] == "-"
                       else int(words[i + 2])) for i in range(0, len(words), 3)}


_BARE = _table("""
    nop 90 -  hlt f4 -  cli fa -  sti fb -  clc f8 -  stc f9 -  cmc f5 -  cld fc -  std fd -
    sahf 9e -  lahf 9f -  leave c9 -  int3 cc -  into ce -  int1 f1 -  icebp f1 -  ud2 0f0b -
    clts 0f06 -  rdmsr 0f32 -  wrmsr 0f30 -  rdtsc 0f31 -  rdtscp 0f01f9 -  rdpmc 0f33 -
    cpuid 0fa2 -  invd 0f08 -  wbinvd 0f09 -  sysenter 0f34 -  sysexit 0f35 -  pause f390 -
    wait 9b -  fwait 9b -  xlat d7 -  xlatb d7 -  daa 27 -  das 2f -  aaa 37 -  aas 3f -
    pushf 9c -  pushfw 9c 16  pushfd 9c 32  popf 9d -  popfw 9d 16  popfd 9d 32
    pusha 60 -  pushaw 60 16  pushad 60 32  popa 61 -  popaw 61 16  popad 61 32
    iret cf -  iretw cf 16  iretd cf 32  cbw 98 16  cwde 98 32  cwd 99 16  cdq 99 32
    movsb a4 -  movsw a5 16  movsd a5 32  cmpsb a6 -  cmpsw a7 16  cmpsd a7 32
    stosb aa -  stosw ab 16  stosd ab 32  lodsb ac -  lodsw ad 16  lodsd ad 32
    scasb ae -  scasw af 16  scasd af 32  insb 6c -  insw 6d 16  insd 6d 32
    outsb 6e -  outsw 6f 16  outsd 6f 32
""")
_RETURNS = _table("""
    ret c3 -  retn c3 -  retw c3 16  retd c3 32  retnw c3 16  retnd c3 32
    retf cb -  retfw cb 16  retfd cb 32
""")
_JCC = {"j" + name: _CONDITIONS.index(cc) for name, cc in _CC.items()}
_LOOPS = {"loop": (0xE2, None), "loope": (0xE1, None), "loopz": (0xE1, None),
          "loopne": (0xE0, None), "loopnz": (0xE0, None), "jcxz": (0xE3, 16),
          "jecxz": (0xE3, 32)}
_PUSH_SREG = {"es": b"\x06", "cs": b"\x0e", "ss": b"\x16", "ds": b"\x1e", "fs": b"\x0f\xa0",
              "gs": b"\x0f\xa8"}
_POP_SREG = {"es": b"\x07", "ss": b"\x17", "ds": b"\x1f", "fs": b"\x0f\xa1", "gs": b"\x0f\xa9"}
_RELATIVE = {"jmp", "call", *_JCC, *_LOOPS}
_SIZED_FORMS = {m: width for m, (_, width) in {**_BARE, **_RETURNS}.items() if width}


def _encode_bare(ins: _Resolved, ctx: _Ctx) -> bytes | None:
    if ins.ops:
        return None
    body, width = _BARE[ins.mnemonic]
    return _finish(ins, body, width is not None and width != ins.bits, False)


def _encode_return(ins: _Resolved, ctx: _Ctx) -> bytes:
    body, width = _RETURNS[ins.mnemonic]
    opsize = width is not None and width != ins.bits
    if not ins.ops:
        return _finish(ins, body, opsize, False)
    if len(ins.ops) != 1 or not isinstance(ins.ops[0], _Imm) or ins.ops[0].value < 0:
        raise _Error(f"{ins.mnemonic} takes an optional 16-bit byte count")
    return _finish(ins, bytes([body[0] - 1]) + _int_bytes(ins.ops[0].value, 2), opsize, False)


def _single_imm(ins: _Resolved) -> _Imm:
    if len(ins.ops) != 1 or not isinstance(ins.ops[0], _Imm) or "far" in ins.ops[0].mods:
        raise _Error(f"{ins.mnemonic} needs a target label or address")
    return ins.ops[0]


def _near_width(ins: _Resolved, kw: str | None) -> int:
    """The offset width a size keyword selects for a branch target or pushed immediate."""
    width = _SIZE_BYTES[kw] if kw else ins.bits // 8
    if width not in (2, 4):
        raise _Error(f"{ins.mnemonic} takes a word or dword operand here, not {kw}")
    return width


def _rel(ins: _Resolved, ctx: _Ctx, target: int, end: int, width: int) -> bytes:
    delta = target - end
    if width == 1 and not -128 <= delta <= 127:
        if ctx.final:
            raise _Error(f"short jump out of range ({delta:+d} bytes)")
        delta = 0
    return (delta & ((1 << (8 * width)) - 1)).to_bytes(width, "little")


def _fits_short(ins: _Resolved, ctx: _Ctx, op: _Imm, short_op: bytes) -> bool:
    """NASM's choice: short when the target is in rel8 range (optimistic for unknown targets)."""
    if ins.key in ctx.near:
        return False
    if not op.known:
        return True
    end = ins.address + len(_finish(ins, b"", False, False)) + len(short_op) + 1
    fits = -128 <= op.value - end <= 127
    if not fits and ctx.sticky:
        ctx.near.add(ins.key)
    return fits


def _jump(ins: _Resolved, ctx: _Ctx, op: _Imm, short_op: bytes | None, near_op: bytes) -> bytes:
    forced_near = "near" in op.mods or op.kw is not None or short_op is None
    if "short" in op.mods or (not forced_near and _fits_short(ins, ctx, op, short_op)):
        prefix = _finish(ins, b"", False, False)
        end = ins.address + len(prefix) + len(short_op) + 1
        return prefix + short_op + _rel(ins, ctx, op.value, end, 1)
    width = _near_width(ins, op.kw)
    prefix = _finish(ins, b"", width * 8 != ins.bits, False)
    end = ins.address + len(prefix) + len(near_op) + width
    return prefix + near_op + _rel(ins, ctx, op.value, end, width)


def _encode_jcc(ins: _Resolved, ctx: _Ctx) -> bytes:
    cc = _JCC[ins.mnemonic]
    return _jump(ins, ctx, _single_imm(ins), bytes([0x70 + cc]), bytes([0x0F, 0x80 + cc]))


def _encode_loop(ins: _Resolved, ctx: _Ctx) -> bytes:
    op = _single_imm(ins)
    opcode, counter = _LOOPS[ins.mnemonic]
    prefix = _finish(ins, b"", False, counter is not None and counter != ins.bits)
    end = ins.address + len(prefix) + 2
    return prefix + bytes([opcode]) + _rel(ins, ctx, op.value, end, 1)


def _encode_transfer(ins: _Resolved, ctx: _Ctx) -> bytes | None:
    """jmp/call: far direct and far indirect by hand, relative by hand, the rest by keystone."""
    op = ins.ops[0] if len(ins.ops) == 1 else None
    if isinstance(op, _Far):
        return _far_direct(ins, op)
    if isinstance(op, _Mem) and "far" in op.mods:
        return _far_indirect(ins, op)
    if isinstance(op, _Imm):
        near_op = b"\xe9" if ins.mnemonic == "jmp" else b"\xe8"
        return _jump(ins, ctx, _single_imm(ins), b"\xeb" if ins.mnemonic == "jmp" else None,
                     near_op)
    return None


def _far_direct(ins: _Resolved, op: _Far) -> bytes:
    width = _near_width(ins, op.kw)
    if not 0 <= op.off < (1 << (8 * width)):
        raise _Error(f"far offset {op.off:#x} does not fit in {width} bytes")
    opcode = b"\xea" if ins.mnemonic == "jmp" else b"\x9a"
    body = opcode + op.off.to_bytes(width, "little") + op.sel.to_bytes(2, "little")
    return _finish(ins, body, width * 8 != ins.bits, False)


def _far_indirect(ins: _Resolved, op: _Mem) -> bytes:
    """FF /5 (jmp) or FF /3 (call): keystone encodes the near form FF /4 or FF /2 for the same
    operand and the ModRM reg field is bumped by one."""
    width = _near_width(ins, op.kw)
    near = ins._replace(ops=(op._replace(kw=_BITS_KW[ins.bits], mods=frozenset()),))
    prefixes, body = _keystone_parts(near)
    reg = 4 if ins.mnemonic == "jmp" else 2
    if len(body) < 2 or body[0] != 0xFF or (body[1] >> 3) & 7 != reg:
        raise _Error(f"keystone encoded the near form of '{ins.text}' unexpectedly")
    body = bytes([0xFF, body[1] + 8]) + body[2:]
    return _finish(ins, body, width * 8 != ins.bits, 0x67 in prefixes)


def _encode_push_pop(ins: _Resolved, ctx: _Ctx) -> bytes | None:
    op = ins.ops[0] if len(ins.ops) == 1 else None
    if isinstance(op, _Reg) and op.kind == "sreg":
        table = _PUSH_SREG if ins.mnemonic == "push" else _POP_SREG
        if op.name not in table:
            raise _Error(f"{ins.mnemonic} {op.name} is not a valid instruction")
        return _finish(ins, table[op.name], False, False)
    if isinstance(op, _Imm) and ins.mnemonic == "push":
        return _push_imm(ins, op)
    return None


def _push_imm(ins: _Resolved, op: _Imm) -> bytes:
    """6A ib when the value fits a sign-extended byte (never for labels or 'strict'), else 68."""
    width = _near_width(ins, None if op.kw == "byte" else op.kw)
    _int_bytes(op.value, width)
    value = _signed(op.value, width)
    short = -128 <= value <= 127 and not op.reloc and "strict" not in op.mods
    if op.kw == "byte" and not short:
        raise _Error(f"push byte {op.value:#x}: value does not fit a signed byte")
    if short:
        return _finish(ins, b"\x6a" + _int_bytes(value, 1), width * 8 != ins.bits, False)
    return _finish(ins, b"\x68" + _int_bytes(op.value, width), width * 8 != ins.bits, False)


_HAND_ENCODERS = {**dict.fromkeys(_BARE, _encode_bare), **dict.fromkeys(_RETURNS, _encode_return),
                  **dict.fromkeys(_JCC, _encode_jcc), **dict.fromkeys(_LOOPS, _encode_loop),
                  "jmp": _encode_transfer, "call": _encode_transfer,
                  "push": _encode_push_pop, "pop": _encode_push_pop}


def _encode(ins: _Resolved, ctx: _Ctx) -> tuple[bytes, str]:
    hand = _HAND_ENCODERS.get(ins.mnemonic)
    code = hand(ins, ctx) if hand else None
    if code is not None:
        return code, "the assembler"
    return _keystone(ins), "keystone"
