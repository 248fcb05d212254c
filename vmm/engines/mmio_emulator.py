"""MMIO emulation after an EPT violation (as KVM's x86 emulator does for MMIO exits): decode the
guest's MOV that touched a device window and carry it out against the MMIO bus.

Supported forms: MOV r/m, r; MOV r, r/m; MOV r/m, imm; MOVZX r, r/m8/16 (8, 16 and 32 bits).
"""
from __future__ import annotations

from vmm.engines.emulate import get_reg, set_reg


class MmioError(Exception):
    """The access cannot be carried out: no device there, or an instruction not emulated."""


def emulate_mmio(engine, insn, gpa: int) -> None:
    """Perform the access of ``insn`` at guest-physical ``gpa`` and step over it."""
    bus = engine.vm.mmio
    if insn is None:
        raise MmioError("the instruction does not decode")
    if bus.lookup(gpa) is None:
        raise MmioError("no RAM and no MMIO device there")
    if insn.mnemonic not in ("mov", "movzx") or len(insn.operands) != 2:
        raise MmioError(f"'{insn}' is not an MMIO access this VMM emulates (MOV/MOVZX only)")
    dst, src = insn.operands
    if dst.kind == "mem":
        value = src.imm if src.kind == "imm" else get_reg(engine, src.reg)
        bus.write(gpa, dst.size, value & ((1 << 8 * dst.size) - 1))
    elif src.kind == "mem":
        set_reg(engine, dst.reg, bus.read(gpa, src.size))
    else:
        raise MmioError(f"'{insn}' has no memory operand")
    eip = engine.cpu.eip_reg
    eip.value = (eip.value + insn.size) & (0xFFFFFFFF if engine.cpu.code_bits == 32 else 0xFFFF)
