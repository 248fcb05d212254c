"""Emulation of x86's sensitive-but-unprivileged instructions (Robin & Irvine, USENIX Security
2000): they never fault in a deprivileged guest kernel, so trap-and-emulate cannot see them, and
binary translation turns each into a callout that runs one of these emulators on virtual state.

SGDT/SIDT/SLDT/STR/SMSW answer from the guest-state area; MOV from CS/SS and PUSH CS/SS give the
selector with the guest's RPL; LAR/LSL/VERR/VERW check descriptors against the guest's CPL
(Intel SDM Vol. 2). Operand sizes and zero-extension follow the reference CPU (QEMU's TCG).
"""
from __future__ import annotations

from emu.disasm import Insn, Operand
from emu.paging import Fault
from emu.segments import Descriptor
from vmm.engines.deprivilege import DeprivilegedGuest
from vmm.engines.emulate import (
    SEGMENTS,
    effective_address,
    get_reg,
    push,
    read_operand,
    set_reg,
    user,
)

FLAG_ZF = 1 << 6
LAR_SYSTEM_TYPES = frozenset((0x1, 0x2, 0x3, 0x4, 0x5, 0x9, 0xB, 0xC))
LSL_SYSTEM_TYPES = frozenset((0x1, 0x2, 0x3, 0x9, 0xB))


def write_operand(g: DeprivilegedGuest, insn: Insn, op: Operand, value: int, size: int) -> None:
    if op.kind == "reg":
        set_reg(g, op.reg, value)
        return
    data = (value & ((1 << 8 * size) - 1)).to_bytes(size, "little")
    g.lin.write(effective_address(g, insn, op), data, user(g))


def store_size(insn: Insn, op: Operand) -> int:
    """SLDT/STR/SMSW/MOV Sreg: a register gets the operand size, memory gets 16 bits."""
    return insn.opsize // 8 if op.kind == "reg" else 2


# ----- descriptor-table registers and the machine status word -----------------------------------
def emulate_store_table(g, insn) -> bool:
    """SGDT/SIDT m: limit, then base (24 bits with a 16-bit operand size, as the reference CPU)."""
    base, limit = g.view.gdtr() if insn.mnemonic == "sgdt" else g.view.idtr()
    if insn.opsize == 16:
        base &= 0xFFFFFF
    address = effective_address(g, insn, insn.operands[0])
    g.lin.write(address, limit.to_bytes(2, "little") + base.to_bytes(4, "little"), user(g))
    return False


def emulate_store_selector(g, insn) -> bool:
    """SLDT/STR r/m16: the guest's LDTR/TR selector."""
    table = g.state.ldtr if insn.mnemonic == "sldt" else g.state.tr
    op = insn.operands[0]
    write_operand(g, insn, op, table.selector, store_size(insn, op))
    return False


def emulate_smsw(g, insn) -> bool:
    """SMSW stores CR0[15:0]; a 32-bit register keeps its bits 31:16 (the reference CPU's
    result: the SDM leaves them undefined)."""
    op = insn.operands[0]
    msw = g.state.cr0 & 0xFFFF
    if op.kind == "reg":
        set_reg(g, op.reg, (get_reg(g, op.reg) & ~0xFFFF) | msw)
    else:
        write_operand(g, insn, op, msw, 2)
    return False


# ----- selectors read by the guest --------------------------------------------------------------
def emulate_read_sreg(g, insn) -> bool:
    """MOV r/m, Sreg: the selector as the guest sees it (its RPL, not the real ring's)."""
    dst, src = insn.operands
    write_operand(g, insn, dst, g.view.selector(SEGMENTS[src.reg]), store_size(insn, dst))
    return False


def emulate_push_sreg(g, insn) -> bool:
    push(g, g.view.selector(SEGMENTS[insn.operands[0].reg]), insn.opsize // 8)
    return False


# ----- descriptor checks ------------------------------------------------------------------------
def _descriptor(g, selector: int) -> Descriptor | None:
    """The descriptor a LAR/LSL/VERR/VERW selector names, or None where they clear ZF (null
    selector, outside the table) instead of faulting."""
    if selector & 0xFFFC == 0:
        return None
    try:
        return g.descriptor(selector)
    except Fault as fault:
        if fault.vector == 13:
            return None
        raise


def _privileged_enough(g, desc: Descriptor, selector: int) -> bool:
    return desc.conforming or desc.dpl >= max(g.guest_cpl(), selector & 3)


def _set_zf(g, value: bool) -> None:
    flags = g.cpu.eflags
    g.cpu.eflags = (flags | FLAG_ZF) if value else (flags & ~FLAG_ZF)


def emulate_lar_lsl(g, insn) -> bool:
    dst, src = insn.operands
    selector = read_operand(g, insn, src, 2) & 0xFFFF
    desc = _descriptor(g, selector)
    valid_types = LAR_SYSTEM_TYPES if insn.mnemonic == "lar" else LSL_SYSTEM_TYPES
    ok = desc is not None and (not desc.system or desc.type in valid_types) and (
        _privileged_enough(g, desc, selector))
    if ok:
        size = insn.opsize // 8
        value = desc.limit if insn.mnemonic == "lsl" else desc.raw >> 32 & 0x00F0FF00
        set_reg(g, dst.reg, value & ((1 << 8 * size) - 1))
    _set_zf(g, ok)
    return False


def emulate_verr_verw(g, insn) -> bool:
    selector = read_operand(g, insn, insn.operands[0], 2) & 0xFFFF
    desc = _descriptor(g, selector)
    if desc is None or desc.system or not _privileged_enough(g, desc, selector):
        _set_zf(g, False)
        return False
    if insn.mnemonic == "verw":
        _set_zf(g, desc.is_writable_data)
    else:
        _set_zf(g, not desc.is_code or bool(desc.type & 0x2))
    return False


SENSITIVE = {
    "sgdt": emulate_store_table, "sidt": emulate_store_table,
    "sldt": emulate_store_selector, "str": emulate_store_selector, "smsw": emulate_smsw,
    "lar": emulate_lar_lsl, "lsl": emulate_lar_lsl,
    "verr": emulate_verr_verw, "verw": emulate_verr_verw,
}


def sensitive_emulator_for(insn: Insn):
    """The emulator of a sensitive instruction that does not fault at CPL 1, or None."""
    operands = insn.operands
    if insn.mnemonic == "mov" and len(operands) == 2 and operands[1].reg in ("cs", "ss"):
        return emulate_read_sreg
    if insn.mnemonic == "push" and operands and operands[0].reg in ("cs", "ss"):
        return emulate_push_sreg
    return SENSITIVE.get(insn.mnemonic)

