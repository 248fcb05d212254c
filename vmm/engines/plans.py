"""Decoded privileged instructions as trap and bt carry them out: the plan (instruction, emulator,
how to step over it) and the exit it is reported as, with the Intel SDM basic exit reason VT-x
would give and its qualification (SDM Vol. 3, Tables 28-1 and 28-3).
"""
from __future__ import annotations

from typing import Callable, NamedTuple

from vmm.vmcs import CR_CLTS, CR_LMSW, CR_MOV_FROM, CR_MOV_TO, ExitReason, cr_qualification

R = ExitReason
INSTRUCTION_REASONS = {
    "hlt": R.HLT, "clts": R.CR_ACCESS, "lmsw": R.CR_ACCESS, "invlpg": R.INVLPG,
    "rdmsr": R.MSR_READ, "wrmsr": R.MSR_WRITE, "lgdt": R.GDTR_IDTR_ACCESS,
    "lidt": R.GDTR_IDTR_ACCESS, "lldt": R.LDTR_TR_ACCESS, "ltr": R.LDTR_TR_ACCESS,
    "wbinvd": R.WBINVD, "invd": R.INVD,
}
GPR_NUMBER = {"eax": 0, "ecx": 1, "edx": 2, "ebx": 3, "esp": 4, "ebp": 5, "esi": 6, "edi": 7}


class Plan(NamedTuple):
    """A decoded privileged instruction, the function that emulates it, how to step over it, and
    the exit it is reported as (decoded once per linear address, carried on every exit record)."""
    insn: object
    emulator: Callable
    size: int
    eip_mask: int
    cs_flags: int  # the code segment it was decoded under (its D bit decides 16/32-bit)
    reason: ExitReason
    qualification: int  # the SDM qualification, where it does not depend on register values


def make_plan(insn, emulator, bits: int, cs_flags: int) -> Plan:
    reason, qualification = classify(insn)
    return Plan(insn, emulator, insn.size, 0xFFFFFFFF if bits == 32 else 0xFFFF, cs_flags,
                reason, qualification)


def classify(insn) -> tuple[ExitReason, int]:
    """The exit reason VT-x would give for a privileged instruction, and its qualification."""
    mnemonic = insn.mnemonic
    if mnemonic == "mov":
        return classify_mov(insn)
    reason = INSTRUCTION_REASONS.get(mnemonic, R.EXCEPTION_NMI)
    if mnemonic == "clts":
        return reason, cr_qualification(0, CR_CLTS)
    if mnemonic == "lmsw":
        return reason, cr_qualification(0, CR_LMSW, lmsw_source=insn.operands[0].imm or 0)
    if reason in (R.GDTR_IDTR_ACCESS, R.LDTR_TR_ACCESS) and insn.operands[0].mem:
        return reason, insn.operands[0].mem.disp & 0xFFFFFFFF
    return reason, 0


def classify_mov(insn) -> tuple[ExitReason, int]:
    dst, src = insn.operands
    for control, gpr, access in ((dst, src, CR_MOV_TO), (src, dst, CR_MOV_FROM)):
        if control.reg and control.reg.startswith("cr"):
            if int(control.reg[2:]) not in (0, 2, 3, 4):
                return R.EXCEPTION_NMI, 0   # #UD before any exit: reflected, not emulated
            return R.CR_ACCESS, cr_qualification(int(control.reg[2:]), access,
                                                 GPR_NUMBER.get(gpr.reg, 0))
        if control.reg and control.reg.startswith("dr"):
            return R.DR_ACCESS, int(control.reg[2:]) | ((access & 1) << 4) | (
                GPR_NUMBER.get(gpr.reg, 0) << 8)
    return R.EXCEPTION_NMI, 0
