"""The capstone guard: an encoding (by hand or by keystone) is accepted only after capstone
decodes it back to the instruction that was written, with the same operands and exactly the
operand- and address-size prefixes the source asked for."""

from __future__ import annotations

from emu.asm.encode import _LOOPS, _SIZED_FORMS
from emu.asm.expressions import _SIZE_BYTES
from emu.asm.keystone_glue import _SELECTOR_SOURCE
from emu.asm.operands import _CC, _REG_FAMILY, _Far, _Imm, _Mem, _Reg, _Resolved
from emu.asm.source import _Error
from emu.disasm import Disassembler, Insn

_GUARD = Disassembler()
_FAMILY_ALIASES = {"sal": "shl", "retn": "ret", "retnw": "retw", "retnd": "retd", "xlat": "xlatb",
                   "fwait": "wait", "icebp": "int1", "loopz": "loope", "loopnz": "loopne",
                   "pushal": "pushad", "popal": "popad", "ljmp": "jmp", "lcall": "call",
                   "cwde": "cbw", "cdq": "cwd"}  # capstone 5 names 98/99 cwde/cdq in 16-bit code


def _family(mnemonic: str) -> str:
    for head in ("j", "set", "cmov"):
        if mnemonic.startswith(head) and mnemonic[len(head):] in _CC:
            return head + _CC[mnemonic[len(head):]]
    return _FAMILY_ALIASES.get(mnemonic, mnemonic)


def _same_family(source: str, decoded: str) -> bool:
    a, b = _family(source), _family(decoded.split()[-1])
    return a == b or (a, b) == ("xchg", "nop") or any(a + s == b or b + s == a for s in "bwdq")


def _asks_opsize(ins: _Resolved) -> bool:
    """The source asks for 0x66 when it names a 16/32-bit general register, or a word/dword
    size, or a sized mnemonic (pushfd, iretw, movsd, ...) that is not the mode's default
    width, or writes o16/o32."""
    if ins.pre.osize:
        return ins.pre.osize != ins.bits
    if _SIZED_FORMS.get(ins.mnemonic, ins.bits) != ins.bits:
        return True
    return any(_op_width(op) in (2, 4) and _op_width(op) != ins.bits // 8 for op in ins.ops)


def _op_width(op: _Reg | _Imm | _Mem | _Far) -> int:
    if isinstance(op, _Reg):
        return op.width if op.kind == "gpr" else 0
    return _SIZE_BYTES.get(op.kw, 0) if op.kw else 0


def _asks_addrsize(ins: _Resolved) -> bool:
    """0x67 is required exactly when a memory operand's registers (or a16/a32, jcxz/jecxz)
    select the other address size."""
    if ins.pre.asize:
        return ins.pre.asize != ins.bits
    counter = _LOOPS.get(ins.mnemonic, (0, None))[1]
    if counter:
        return counter != ins.bits
    return any(isinstance(op, _Mem) and op.asize != ins.bits for op in ins.ops)


def _same_memory(op: _Mem, decoded, seg: str | None) -> bool:
    mem = decoded.mem
    if (op.seg or seg) != mem.segment or (op.disp - mem.disp) & ((1 << op.asize) - 1):
        return False
    if op.kw and "far" not in op.mods and _SIZE_BYTES[op.kw] != decoded.size:
        return False
    if op.asize == 16:
        return {op.base, op.index} == {mem.base, mem.index}
    return (op.base, op.index) == (mem.base, mem.index) and (not op.index or op.scale == mem.scale)


def _same_imm(value: int, decoded, size: int) -> bool:
    """`value` fits the decoded immediate and equals it; `size` (if any) must match too."""
    bits = 8 * decoded.size
    if size and size != decoded.size:
        return False
    return -(1 << (bits - 1)) <= value < (1 << bits) and not (value - decoded.imm) % (1 << bits)


def _operand_problem(ins: _Resolved, insn: Insn) -> str | None:
    """Every source register, immediate/target and memory operand must appear in the decode.
    Registers compare exactly, except in mov with a segment register and in lar/lsl, whose
    selector operand is 16-bit whatever register width is written."""
    if _family(ins.mnemonic) == "xchg" and insn.mnemonic == "nop":
        return None
    loose = ins.mnemonic in _SELECTOR_SOURCE or ins.mnemonic == "mov" and any(
        isinstance(op, _Reg) and op.kind == "sreg" for op in ins.ops)
    regs = {_reg_key(op.reg, loose) for op in insn.operands if op.kind == "reg"}
    imms = [op for op in insn.operands if op.kind == "imm"]
    mems = [op for op in insn.operands if op.kind == "mem"]
    for op in ins.ops:
        if isinstance(op, _Reg) and _reg_key(op.name, loose) not in regs:
            return f"register {op.name} is missing"
        if isinstance(op, _Far) and not all(any(_same_imm(v, imm, 0) for imm in imms)
                                            for v in (op.sel, op.off)):
            return "the far pointer differs"
        if isinstance(op, _Imm) and not any(_same_imm(op.value, imm, _imm_size(op))
                                            for imm in imms):
            return _imm_problem(op.value, imms)
        if isinstance(op, _Mem) and not any(_same_memory(op, m, ins.pre.seg) for m in mems):
            return "the memory operand differs"
    return None


def _imm_size(op: _Imm) -> int:
    return _op_width(op) if _op_width(op) in (2, 4) else 0


def _imm_problem(value: int, imms: list) -> str:
    truncated = [imm for imm in imms if not (value - imm.imm) % (1 << (8 * imm.size))]
    if truncated:
        return f"the value {value:#x} does not fit its {truncated[0].size}-byte operand"
    return "an immediate or target differs"


def _reg_key(name: str, loose: bool) -> str:
    return _REG_FAMILY.get(name, name) if loose else name


def _problem(ins: _Resolved, insn: Insn | None, code: bytes) -> str | None:
    if insn is None:
        return "capstone cannot decode it"
    if insn.size != len(code):
        return f"capstone decodes {insn.size} of the {len(code)} bytes"
    if not _same_family(ins.mnemonic, insn.mnemonic):
        return "a different instruction"
    if 0x66 in insn.prefixes and not _asks_opsize(ins):
        return "an operand-size prefix (0x66) the source did not ask for"
    if (0x67 in insn.prefixes) != _asks_addrsize(ins):
        return "the address-size prefix (0x67) does not match the memory operand"
    return _operand_problem(ins, insn)


def _verify(ins: _Resolved, code: bytes, who: str) -> None:
    insn = _GUARD.decode(code, ins.address, ins.bits)
    problem = _problem(ins, insn, code)
    if problem:
        decoded = f"'{insn}'" if insn else "nothing"
        raise _Error(f"{who} encoded '{ins.text}' as {code.hex(' ')}, which capstone reads as "
                     f"{decoded} in {ins.bits}-bit code: {problem}")
