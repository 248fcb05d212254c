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
    FLAG_AC,
    FLAG_IF,
    FLAG_NT,
    FLAG_RF,
    FLAG_TF,
    FLAG_VM,
    FS,
    GS,
    IOPL_MASK,
    SS,
)
from emu.disasm import Insn, Operand
from emu.events import UD, EventKind
from emu.paging import Fault
from vmm.engines.deprivilege import DeprivilegedGuest, UnsupportedGuestState
from vmm.engines.far_transfer import StackCursor, code_target, far_return

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
CR4_DE = 1 << 3
CONTROL_REGISTERS = frozenset((0, 2, 3, 4))   # MOV to/from any other CRn is #UD
# EFLAGS bits POPF and IRET may write (the arithmetic flags, DF, TF, NT, AC, ID; IF and IOPL by
# privilege, RF by IRET alone); the reserved bits keep their fixed values (QEMU cpu_load_eflags).
FLAG_ID = 1 << 21
WRITABLE_FLAGS = 0xCD5 | FLAG_TF | FLAG_NT | FLAG_AC | FLAG_ID


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
    set_guest_flags(g, pop(g, size), size=size)
    return False


def emulate_invalid(g, insn) -> bool:
    """An encoding the CPU does not accept (MOV to/from CR1, CR5-CR7): #UD."""
    raise Fault(UD)


# ----- control registers, MSRs, debug registers -------------------------------------------------
def emulate_mov_cr(g, insn) -> bool:
    dst, src = insn.operands
    if dst.reg.startswith("cr"):
        g.write_cr(int(dst.reg[2:]), get_reg(g, src.reg))
    else:
        set_reg(g, dst.reg, g.read_cr(int(src.reg[2:])))
    return False


def debug_register(g, name: str) -> int:
    """DR4/DR5 are DR6/DR7 unless CR4.DE is set, which makes them #UD."""
    n = int(name[2:])
    if n in (4, 5):
        if g.state.cr4 & CR4_DE:
            raise Fault(UD)
        n += 2
    return n


def emulate_mov_dr(g, insn) -> bool:
    dst, src = insn.operands
    if dst.reg.startswith("dr"):
        g.debug_regs[debug_register(g, dst.reg)] = get_reg(g, src.reg)
    else:
        set_reg(g, dst.reg, g.debug_regs[debug_register(g, src.reg)])
    return False


def emulate_clts(g, insn) -> bool:
    g.write_cr0(g.state.cr0 & ~CR0_TS)
    return False


def emulate_lmsw(g, insn) -> bool:
    msw = read_operand(g, insn, insn.operands[0], 2)
    g.write_cr0((g.state.cr0 & ~0xE) | (msw & 0xF) | (g.state.cr0 & 1))
    return False


def emulate_rdmsr(g, insn) -> bool:
    value = g.vcpu.vm.read_msr(get_reg(g, "ecx"))
    g.cpu.gpr[EAX], g.cpu.gpr[EDX] = value & 0xFFFFFFFF, value >> 32
    return False


def emulate_wrmsr(g, insn) -> bool:
    g.vcpu.vm.write_msr(g.cpu.gpr[ECX] & 0xFFFFFFFF,
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


def emulate_ljmp(g, insn) -> bool:
    selector, offset = far_target(g, insn)
    if not g.protected:
        g.view.load_real(CS, selector)
        g.cpu.eip = offset
        return True
    target = code_target(g, selector, offset, call=False)
    g.view.load_code(target.selector, target.desc, g.guest_cpl())
    g.cpu.eip = target.offset
    return True


def emulate_lcall(g, insn) -> bool:
    selector, offset = far_target(g, insn)
    size = insn.opsize // 8
    if not g.protected:
        push(g, g.view.selector(CS), size)
        push(g, next_eip(g, insn), size)
        g.view.load_real(CS, selector)
        g.cpu.eip = offset
        return True
    target = code_target(g, selector, offset, call=True)
    if target.push_bits:
        size = target.push_bits // 8
    esp = g.cpu.gpr[ESP]
    try:
        push(g, g.view.selector(CS), size)
        push(g, next_eip(g, insn), size)
    except Fault:
        g.cpu.gpr[ESP] = esp
        raise
    g.view.load_code(target.selector, target.desc, g.guest_cpl())
    g.cpu.eip = target.offset
    return True


def emulate_retf(g, insn) -> bool:
    size = insn.opsize // 8
    release = insn.operands[0].imm if insn.operands else 0
    frame = StackCursor(g)
    offset, selector = frame.pop(size), frame.pop(size) & 0xFFFF
    if not g.protected:
        frame.skip(release)
        frame.commit()
        g.view.load_real(CS, selector)
        g.cpu.eip = offset
        return True
    far_return(g, frame, selector, offset, size, release)
    return True


def emulate_iret(g, insn) -> bool:
    size = insn.opsize // 8
    before = g.view.flags(), g.guest_cpl()  # IRET's flag rules use the CPL it ran at
    frame = StackCursor(g)
    offset, selector, flags = frame.pop(size), frame.pop(size) & 0xFFFF, frame.pop(size)
    if not g.protected:
        frame.commit()
        g.view.load_real(CS, selector)
        g.cpu.eip = offset
    elif before[0] & FLAG_NT or flags & FLAG_VM and size == 4:
        raise UnsupportedGuestState("IRET to virtual-8086 mode or from a nested task (a task "
                                    "switch) is not modelled")
    else:
        far_return(g, frame, selector, offset, size)
    set_guest_flags(g, flags, *before, size=size, iret=True)
    return True


def set_guest_flags(g, flags: int, current: int | None = None, cpl: int | None = None,
                    size: int = 4, iret: bool = False) -> None:
    """POPF/IRET: the writable bits only (IOPL at CPL 0, IF when CPL <= IOPL, RF by IRET), from
    the flags and CPL the instruction started with; a 16-bit operand writes bits 15:0."""
    current = g.view.flags() if current is None else current
    cpl = g.guest_cpl() if cpl is None else cpl
    mask = WRITABLE_FLAGS | (FLAG_RF if iret else 0)
    if cpl == 0:
        mask |= IOPL_MASK
    if cpl <= (current >> 12) & 3:
        mask |= FLAG_IF
    if size == 2:
        mask &= 0xFFFF
    was_set = g.state.interrupt_flag
    g.view.set_flags((current & ~mask) | (flags & mask) | 2)
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
        controls = [r for r in regs if r.startswith("cr")]
        if controls:
            return emulate_mov_cr if int(controls[0][2:]) in CONTROL_REGISTERS else emulate_invalid
        if any(r.startswith("dr") for r in regs):
            return emulate_mov_dr
        if insn.operands and insn.operands[0].reg in SEGMENTS:
            # MOV CS is #UD, which the CPU raises itself: nothing to emulate
            return emulate_mov_sreg if insn.operands[0].reg != "cs" else None
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
