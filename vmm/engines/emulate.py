"""Instruction emulation for the trap-and-emulate VMM: the semantics of each privileged or
sensitive instruction that faulted, carried out on the guest's shadow state (Intel SDM Vol. 2).

Each emulator gets the ``DeprivilegedGuest`` and the decoded instruction; it either completes the
instruction (and returns True when it already set EIP itself) or raises an architectural
``Fault`` that the caller reflects into the guest.
"""
from __future__ import annotations

import struct
from typing import Callable

from emu.cpu import (
    CS,
    DS,
    EAX,
    ECX,
    EDX,
    ES,
    ESP,
    FLAG_IF,
    FLAG_NT,
    FLAG_VM,
    FS,
    GS,
    SS,
)
from emu.disasm import Insn, Operand
from emu.events import EventKind
from emu.paging import Fault
from vmm.engines.deprivilege import DeprivilegedGuest, UnsupportedGuestState

SEGMENTS = {"es": ES, "cs": CS, "ss": SS, "ds": DS, "fs": FS, "gs": GS}
_GPR32 = ("eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi")
REGISTERS: dict[str, tuple[int, int, int]] = {}
for _i, _name in enumerate(_GPR32):
    REGISTERS[_name] = (_i, 0xFFFFFFFF, 0)
    REGISTERS[_name[1:]] = (_i, 0xFFFF, 0)
for _i, _name in enumerate(("al", "cl", "dl", "bl")):
    REGISTERS[_name] = (_i, 0xFF, 0)
    REGISTERS[_name[0] + "h"] = (_i, 0xFF, 8)
STACK_BASES = {"esp", "ebp", "sp", "bp"}
CR0_TS = 1 << 3


# ----- operand access ---------------------------------------------------------------------------
def get_reg(g: DeprivilegedGuest, name: str) -> int:
    index, mask, shift = REGISTERS[name]
    return (g.cpu.gpr[index] >> shift) & mask


def set_reg(g: DeprivilegedGuest, name: str, value: int) -> None:
    index, mask, shift = REGISTERS[name]
    old = g.cpu.gpr[index]
    g.cpu.gpr[index] = (old & ~(mask << shift)) | ((value & mask) << shift)


def effective_address(g: DeprivilegedGuest, insn: Insn, op: Operand) -> int:
    """Linear address of a memory operand: segment base + base + index * scale + displacement."""
    mem = op.mem
    offset = mem.disp
    if mem.base:
        offset += get_reg(g, mem.base)
    if mem.index:
        offset += get_reg(g, mem.index) * mem.scale
    offset &= 0xFFFF if insn.addrsize == 16 else 0xFFFFFFFF
    default = SS if mem.base in STACK_BASES else DS
    seg = SEGMENTS[mem.segment] if mem.segment else default
    return (g.cpu.segs[seg].base + offset) & 0xFFFFFFFF


def read_operand(g: DeprivilegedGuest, insn: Insn, op: Operand, size: int | None = None) -> int:
    size = size or op.size
    if op.kind == "reg":
        return get_reg(g, op.reg)
    if op.kind == "imm":
        return op.imm
    return int.from_bytes(g.lin.read(effective_address(g, insn, op), size, user=user(g)), "little")


def user(g: DeprivilegedGuest) -> bool:
    return g.guest_cpl() == 3


def stack_mask(g: DeprivilegedGuest) -> int:
    return 0xFFFFFFFF if g.cpu.stack_bits == 32 else 0xFFFF


def pop(g: DeprivilegedGuest, size: int) -> int:
    cpu, mask = g.cpu, stack_mask(g)
    esp = cpu.gpr[ESP]
    value = int.from_bytes(g.lin.read(cpu.segs[SS].base + (esp & mask), size, user(g)), "little")
    cpu.gpr[ESP] = (esp & ~mask) | ((esp + size) & mask)
    return value


def push(g: DeprivilegedGuest, value: int, size: int) -> None:
    cpu, mask = g.cpu, stack_mask(g)
    esp = cpu.gpr[ESP]
    new = (esp - size) & mask
    g.lin.write(cpu.segs[SS].base + new, (value & ((1 << 8 * size) - 1)).to_bytes(size, "little"),
                user(g))
    cpu.gpr[ESP] = (esp & ~mask) | new


def next_eip(g: DeprivilegedGuest, insn: Insn) -> int:
    return (g.cpu.eip + insn.size) & (0xFFFFFFFF if g.cpu.code_bits == 32 else 0xFFFF)


# ----- interrupt flag and flags -----------------------------------------------------------------
def emulate_cli(g, insn) -> bool:
    g.state.interrupt_flag = False
    return False


def emulate_sti(g, insn) -> bool:
    was_set = g.state.interrupt_flag
    g.state.interrupt_flag = True
    if not was_set:
        g.vcpu.open_interrupt_window()
    return False


def emulate_hlt(g, insn) -> bool:
    """HLT: step over it; the run loop idles until the next interrupt."""
    g.cpu.eip = next_eip(g, insn)
    return True


def emulate_pushf(g, insn) -> bool:
    push(g, g.view.flags(), insn.opsize // 8)
    return False


def emulate_popf(g, insn) -> bool:
    size = insn.opsize // 8
    value = pop(g, size)
    if size == 2:
        value |= g.view.flags() & 0xFFFF0000
    was_set = g.state.interrupt_flag
    g.view.set_flags(value)
    if g.state.interrupt_flag and not was_set:
        g.vcpu.open_interrupt_window()
    return False


# ----- control registers, MSRs, debug registers -------------------------------------------------
def emulate_mov_cr(g, insn) -> bool:
    dst, src = insn.operands
    if dst.reg.startswith("cr"):
        g.write_cr(int(dst.reg[2:]), get_reg(g, src.reg))
    else:
        set_reg(g, dst.reg, g.read_cr(int(src.reg[2:])))
    return False


def emulate_mov_dr(g, insn) -> bool:
    dst, src = insn.operands
    if dst.reg.startswith("dr"):
        g.debug_regs[int(dst.reg[2:])] = get_reg(g, src.reg)
    else:
        set_reg(g, dst.reg, g.debug_regs[int(src.reg[2:])])
    return False


def emulate_clts(g, insn) -> bool:
    g.write_cr0(g.state.cr0 & ~CR0_TS)
    return False


def emulate_lmsw(g, insn) -> bool:
    msw = read_operand(g, insn, insn.operands[0], 2)
    g.write_cr0((g.state.cr0 & ~0xE) | (msw & 0xF) | (g.state.cr0 & 1))
    return False


def emulate_rdmsr(g, insn) -> bool:
    value = g.cpu.msr_read(get_reg(g, "ecx"))
    g.cpu.gpr[EAX], g.cpu.gpr[EDX] = value & 0xFFFFFFFF, value >> 32
    return False


def emulate_wrmsr(g, insn) -> bool:
    g.cpu.msr_write(g.cpu.gpr[ECX] & 0xFFFFFFFF,
                    (g.cpu.gpr[EDX] & 0xFFFFFFFF) << 32 | (g.cpu.gpr[EAX] & 0xFFFFFFFF))
    return False


def emulate_invlpg(g, insn) -> bool:
    g.cpu.flush_tlb()
    return False


def emulate_nop(g, insn) -> bool:
    return False


# ----- descriptor tables ------------------------------------------------------------------------
def emulate_load_table(g, insn) -> bool:
    raw = g.lin.read(effective_address(g, insn, insn.operands[0]), 6)
    limit, base = struct.unpack("<HI", raw)
    if insn.opsize == 16:
        base &= 0xFFFFFF
    g.load_table("gdtr" if insn.mnemonic == "lgdt" else "idtr", base, limit)
    return False


def emulate_lldt_ltr(g, insn) -> bool:
    selector = read_operand(g, insn, insn.operands[0], 2)
    g.load_system_segment("ldtr" if insn.mnemonic == "lldt" else "tr", selector)
    return False


# ----- segment loads ----------------------------------------------------------------------------
def emulate_mov_sreg(g, insn) -> bool:
    dst, src = insn.operands
    g.load_data_segment(SEGMENTS[dst.reg], read_operand(g, insn, src, 2))
    return False


def emulate_pop_sreg(g, insn) -> bool:
    seg = SEGMENTS[insn.operands[0].reg]
    esp = g.cpu.gpr[ESP]
    selector = pop(g, insn.opsize // 8) & 0xFFFF
    try:
        g.load_data_segment(seg, selector)
    except Fault:
        g.cpu.gpr[ESP] = esp
        raise
    return False


def emulate_load_far_pointer(g, insn) -> bool:
    """LDS/LES/LFS/LGS/LSS reg, m16:16/32."""
    dst, src = insn.operands
    size = insn.opsize // 8
    raw = g.lin.read(effective_address(g, insn, src), size + 2, user(g))
    g.load_data_segment(SEGMENTS[insn.mnemonic[1:]], int.from_bytes(raw[size:], "little"))
    set_reg(g, dst.reg, int.from_bytes(raw[:size], "little"))
    return False


# ----- control transfers ------------------------------------------------------------------------
def far_target(g, insn) -> tuple[int, int]:
    """(selector, offset) of a far JMP/CALL: ptr16:16/32 immediate or m16:16/32."""
    ops = insn.operands
    if len(ops) == 2:
        return ops[0].imm, ops[1].imm
    size = insn.opsize // 8
    raw = g.lin.read(effective_address(g, insn, ops[0]), size + 2, user(g))
    return int.from_bytes(raw[size:], "little"), int.from_bytes(raw[:size], "little")


def transfer(g, selector: int, offset: int) -> None:
    """Load CS:EIP at the current privilege (real mode: paragraph load)."""
    if g.protected:
        g.load_code_segment(selector, g.guest_cpl())
    else:
        g.view.load_real(CS, selector)
    g.cpu.eip = offset


def emulate_ljmp(g, insn) -> bool:
    selector, offset = far_target(g, insn)
    transfer(g, selector, offset)
    return True


def emulate_lcall(g, insn) -> bool:
    selector, offset = far_target(g, insn)
    size = insn.opsize // 8
    push(g, g.view.selector(CS), size)
    push(g, next_eip(g, insn), size)
    transfer(g, selector, offset)
    return True


def emulate_retf(g, insn) -> bool:
    size = insn.opsize // 8
    offset, selector = pop(g, size), pop(g, size) & 0xFFFF
    release = insn.operands[0].imm if insn.operands else 0
    if g.protected and (selector & 3) > g.guest_cpl():
        g.cpu.gpr[ESP] += release
        return_outward(g, selector, offset, size)
        g.cpu.gpr[ESP] += release
        return True
    transfer(g, selector, offset)
    g.cpu.gpr[ESP] = (g.cpu.gpr[ESP] & ~stack_mask(g)) | ((g.cpu.gpr[ESP] + release) & stack_mask(g))
    return True


def return_outward(g, selector: int, offset: int, size: int) -> None:
    """RET/IRET to a less privileged ring: pop ESP and SS, reload, null inaccessible segments."""
    new_esp, new_ss = pop(g, size), pop(g, size) & 0xFFFF
    ring = selector & 3
    ss_desc = g.descriptor(new_ss)
    g._check_stack_segment(new_ss, ss_desc, ring)
    g.load_code_segment(selector, ring)
    g.view.load_stack(new_ss, ss_desc)
    g.cpu.gpr[ESP] = new_esp
    g.cpu.eip = offset
    for seg in (ES, DS, FS, GS):
        cache = g.cpu.segs[seg]
        dpl = (cache.flags >> 13) & 3
        conforming_code = (cache.flags >> 8) & 0xC == 0xC
        if cache.flags and not conforming_code and dpl < ring:
            g.cpu.load_segment(seg, 0, 0, 0, 0)


def emulate_iret(g, insn) -> bool:
    size = insn.opsize // 8
    before = g.view.flags(), g.guest_cpl()  # IRET's flag rules use the CPL it ran at
    offset, selector, flags = pop(g, size), pop(g, size) & 0xFFFF, pop(g, size)
    if size == 2:
        flags |= g.view.flags() & 0xFFFF0000
    if not g.protected:
        g.view.load_real(CS, selector)
        g.cpu.eip = offset
    elif flags & (FLAG_VM | FLAG_NT) and size == 4:
        raise UnsupportedGuestState("IRET to virtual-8086 mode or a nested task is not modelled")
    elif (selector & 3) > g.guest_cpl():
        return_outward(g, selector, offset, size)
    else:
        g.load_code_segment(selector, g.guest_cpl())
        g.cpu.eip = offset
    set_guest_flags(g, flags, *before)
    return True


def set_guest_flags(g, flags: int, current: int | None = None, cpl: int | None = None) -> None:
    """IRET/POPF rules: IOPL only changes at CPL 0, IF only when CPL <= IOPL (the flags and CPL
    the instruction started with)."""
    current = g.view.flags() if current is None else current
    cpl = g.guest_cpl() if cpl is None else cpl
    keep = 0
    if cpl > 0:
        keep |= 0x3000
    if cpl > ((current >> 12) & 3):
        keep |= FLAG_IF
    was_set = g.state.interrupt_flag
    g.view.set_flags((flags & ~keep) | (current & keep))
    if g.state.interrupt_flag and not was_set:
        g.vcpu.open_interrupt_window()


def emulate_int(g, insn) -> bool:
    """INT n in virtual-8086 mode (IOPL < 3 faults): deliver through the guest's IVT."""
    g.cpu.eip = next_eip(g, insn)
    g.reflect(insn.operands[0].imm, EventKind.SOFTWARE_INTERRUPT)
    return True


EMULATORS: dict[str, Callable[[DeprivilegedGuest, Insn], bool]] = {
    "cli": emulate_cli, "sti": emulate_sti, "hlt": emulate_hlt,
    "pushf": emulate_pushf, "pushfd": emulate_pushf, "popf": emulate_popf, "popfd": emulate_popf,
    "clts": emulate_clts, "lmsw": emulate_lmsw,
    "rdmsr": emulate_rdmsr, "wrmsr": emulate_wrmsr, "invlpg": emulate_invlpg,
    "wbinvd": emulate_nop, "invd": emulate_nop,
    "lgdt": emulate_load_table, "lidt": emulate_load_table,
    "lldt": emulate_lldt_ltr, "ltr": emulate_lldt_ltr,
    "pop": emulate_pop_sreg,
    "lds": emulate_load_far_pointer, "les": emulate_load_far_pointer,
    "lfs": emulate_load_far_pointer, "lgs": emulate_load_far_pointer,
    "lss": emulate_load_far_pointer,
    "ljmp": emulate_ljmp, "lcall": emulate_lcall,
    "retf": emulate_retf, "lret": emulate_retf, "retfd": emulate_retf,
    "iret": emulate_iret, "iretd": emulate_iret, "int": emulate_int,
}


FAR_INDIRECT = {("call", 3): emulate_lcall, ("jmp", 5): emulate_ljmp}


def emulator_for(insn: Insn):
    """The emulator for a faulting instruction, or None if the VMM does not emulate it."""
    if insn.mnemonic == "mov":
        regs = [op.reg or "" for op in insn.operands]
        if any(r.startswith("cr") for r in regs):
            return emulate_mov_cr
        if any(r.startswith("dr") for r in regs):
            return emulate_mov_dr
        if insn.operands and insn.operands[0].reg in SEGMENTS:
            return emulate_mov_sreg
        return None
    if insn.mnemonic == "pop" and not (insn.operands and insn.operands[0].reg in SEGMENTS):
        return None
    if insn.mnemonic in ("jmp", "call"):
        return FAR_INDIRECT.get((insn.mnemonic, indirect_group(insn)))
    return EMULATORS.get(insn.mnemonic)


def indirect_group(insn: Insn) -> int | None:
    """The ModRM reg field of an FF-group instruction (3: CALL far m16:xx, 5: JMP far m16:xx);
    capstone names these plain `call`/`jmp`, like their near forms."""
    raw = insn.raw[len(insn.prefixes):]
    if len(raw) < 2 or raw[0] != 0xFF:
        return None
    return (raw[1] >> 3) & 7
