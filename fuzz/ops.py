"""The instructions a structured fuzz case is made of: each op is a few lines of assembly of one
kind (ordinary arithmetic, or one privileged or sensitive instruction with the set-up it needs),
drawn from a seeded ``random.Random``.

An op may fault; the runtime's event handler records the event and resumes after the op, so ops
need not avoid faults, only keep what the runtime relies on: SS stays the flat kernel data
segment (or a load of it faults), ESP is balanced, and paging maps the first 4 MiB onto itself.
Local labels (``.t``) belong to the op (the program puts each op under its own label).
"""
from __future__ import annotations

import random
from typing import Callable, NamedTuple

GPRS = ("eax", "ebx", "ecx", "edx", "esi", "edi", "ebp")
SCRATCH = 0x3000
USER_CS, USER_DS, USER_STACK = 0x1B, 0x23, 0x80000
# Selectors worth loading: every GDT entry of the runtime (fuzz/runtime.asm) with RPL 0 and a
# few RPL variants, the two LDT entries, and one beyond the GDT's limit.
SELECTORS = (0x00, 0x03, 0x08, 0x0B, 0x10, 0x13, 0x18, 0x1B, 0x20, 0x23, 0x28, 0x30, 0x38,
             0x40, 0x48, 0x50, 0x58, 0x60, 0x68, 0x70, 0x78, 0x04, 0x0C, 0x0F, 0x1000)
FAR_TARGETS = (0x08, 0x08, 0x08, 0x09, 0x0B, 0x0C, 0x10, 0x18, 0x1B, 0x28, 0x40, 0x43, 0x58,
               0x68, 0x00, 0x38)
STACK_SELECTORS = (0x10, 0x10, 0x13, 0x20, 0x23, 0x08, 0x00, 0x38, 0x60, 0x70, 0x04)
MSRS = (0x174, 0x175, 0x176, 0x1B, 0x277, 0xC0000080, 0xC0000081, 0x8B, 0x12345, 0x3A)
CPUID_LEAVES = (0, 1, 2, 7, 0xB, 0xD, 0x80000000, 0x80000001, 0x80000002, 0x80000008,
                0x40000000, 0x12345678)
CR0_TOGGLES = (1 << 1, 1 << 2, 1 << 3, 1 << 4, 1 << 5, 1 << 16, 1 << 18, 1 << 29, 1 << 30)
CR4_TOGGLES = (1 << 0, 1 << 1, 1 << 2, 1 << 3, 1 << 4, 1 << 7, 1 << 8, 1 << 9, 1 << 10, 1 << 11,
               1 << 20, 1 << 31)
# EFLAGS bits a POPF may try: all but TF (a #DB after every instruction) and NT (an IRET that
# switches tasks); bits 1, 3, 5, 15 and 22+ are reserved, which is part of the test.
POPF_BITS = 0xFFFFBEFF
PORTS = (0x80, 0x3FF, 0xE9, 0x1234, 0x61, 0x3FA)


class Op(NamedTuple):
    kind: str
    text: str

    def lines(self) -> list[str]:
        return self.text.splitlines()


def imm(rng: random.Random) -> int:
    return rng.choice((0, 1, 0xFFFFFFFF, 0x80000000, 0x7FFFFFFF, rng.getrandbits(32),
                       rng.getrandbits(8)))


def gpr(rng: random.Random) -> str:
    return rng.choice(GPRS)


def arithmetic(rng):
    forms = ("mov {r}, {i:#x}", "add {r}, {s}", "sub {r}, {i:#x}", "xor {r}, {s}",
             "imul {r}, {s}", "rol {r}, {n}", "shr {r}, {n}", "not {r}", "neg {r}",
             "adc {r}, {s}", "lea {r}, [{s} + {i:#x}]", "bswap {r}", "cmp {r}, {s}",
             "mov dword [ss:{a:#x}], {r}", "mov {r}, [ss:{a:#x}]", "mov dword [{a:#x}], {r}")
    return "\n".join(rng.choice(forms).format(r=gpr(rng), s=gpr(rng), i=imm(rng),
                                              n=rng.randrange(32),
                                              a=SCRATCH + 4 * rng.randrange(64))
                     for _ in range(rng.randint(1, 4)))


def division(rng):
    divisor = rng.choice((0, 1, 3, 0xFFFFFFFF, imm(rng)))
    width = rng.choice(("ecx", "cx", "cl"))
    return (f"mov eax, {imm(rng):#x}\nmov edx, {rng.choice((0, 1, imm(rng))):#x}\n"
            f"mov ecx, {divisor:#x}\n{rng.choice(('div', 'idiv'))} {width}")


def cpuid(rng):
    return f"mov eax, {rng.choice(CPUID_LEAVES):#x}\nxor ecx, ecx\ncpuid"


def msr(rng):
    number = rng.choice(MSRS)
    if rng.random() < 0.5:
        return f"mov ecx, {number:#x}\nrdmsr"
    return (f"mov ecx, {number:#x}\nmov eax, {rng.choice((0, 8, 0x1000, imm(rng))):#x}\n"
            f"xor edx, edx\nwrmsr\nrdmsr")


def control_register(rng):
    choice = rng.randrange(8)
    if choice == 0:
        return f"mov {gpr(rng)}, cr{rng.choice((0, 2, 3, 4))}"
    if choice == 1:
        mask = sum(rng.sample(CR0_TOGGLES, rng.randint(1, 3)))
        return f"mov eax, cr0\nxor eax, {mask:#x}\nmov cr0, eax"
    if choice == 2:
        return f"mov eax, {imm(rng):#x}\nmov cr2, eax\nmov ebx, cr2"
    if choice == 3:
        return f"mov eax, {0x4000 | rng.choice((0, 8, 0x10)):#x}\nmov cr3, eax"
    if choice == 4:
        mask = sum(rng.sample(CR4_TOGGLES, rng.randint(1, 2)))
        return f"mov eax, cr4\nxor eax, {mask:#x}\nmov cr4, eax"
    if choice == 5:
        return "mov eax, 0x4000\nmov cr3, eax\nmov eax, cr0\nor eax, 0x80000000\nmov cr0, eax"
    if choice == 6:
        return "mov eax, cr0\nand eax, 0x7fffffff\nmov cr0, eax"
    number = rng.choice((1, 5, 6, 7))
    read, write = 0xC0 | number << 3, 0xC0 | number << 3       # mov eax, crN / mov crN, eax
    return (f"db 0x0f, 0x20, {read:#x} ; mov eax, cr{number}" if rng.random() < 0.5 else
            f"xor eax, eax\ndb 0x0f, 0x22, {write:#x} ; mov cr{number}, eax")


def descriptor_table(rng):
    where = SCRATCH + 8 * rng.randrange(32)
    choice = rng.randrange(9)
    if choice == 0:
        return f"{rng.choice(('sgdt', 'sidt'))} [{where:#x}]"
    if choice == 1:
        return f"{rng.choice(('sldt', 'str', 'smsw'))} {rng.choice(('eax', 'ax', f'[{where:#x}]'))}"
    if choice == 2:
        return rng.choice(("lgdt [gdt_descriptor]", "lidt [idt_descriptor]"))
    if choice == 3:
        return f"mov ax, {rng.choice((0x30, 0x00, 0x28, 0x10, 0x34)):#x}\nlldt ax"
    if choice == 4:
        return f"mov ax, {rng.choice((0x28, 0x00, 0x30, 0x2B)):#x}\nltr ax"
    if choice == 5:   # a small IDT limit, an event past it, the real IDT back
        return (f"mov word [ss:{where:#x}], {rng.choice((0x7f, 0xff, 0x17f)):#x}\n"
                f"mov dword [ss:{where + 2:#x}], IDT_BASE\nlidt [ss:{where:#x}]\n"
                f"int {rng.choice((0x30, 0x80, 3, 13)):#x}\nlidt [idt_descriptor]")
    if choice == 6:   # an IDT somewhere else: outside RAM, or in zeroed scratch
        base = rng.choice((0x10000000, 0xFFFFF000, SCRATCH))
        return (f"mov word [ss:{where:#x}], 0x7ff\nmov dword [ss:{where + 2:#x}], {base:#x}\n"
                f"lidt [ss:{where:#x}]\nint3\nlidt [idt_descriptor]")
    if choice == 7:   # a GDT somewhere else, then a segment load through it
        base = rng.choice((0x10000000, SCRATCH))
        return (f"mov word [ss:{where:#x}], 0x7f\nmov dword [ss:{where + 2:#x}], {base:#x}\n"
                f"lgdt [ss:{where:#x}]\nmov ax, 0x10\nmov ds, ax\nlgdt [gdt_descriptor]")
    return f"mov ax, {rng.choice(SELECTORS):#x}\n{rng.choice(('lar', 'lsl'))} ebx, ax"


def flags(rng):
    choice = rng.randrange(6)
    if choice == 0:
        return f"pushfd\npop {gpr(rng)}"
    if choice == 1:
        return f"push dword {imm(rng) & POPF_BITS | 2:#x}\npopfd\npushfd\npop eax"
    if choice == 2:
        return f"pushfd\npop eax\nxor eax, {rng.choice((0x200, 0x3000, 0x1000, 0x40000, 0x200000)):#x}\npush eax\npopfd"
    if choice == 3:
        return rng.choice(("cli", "sti", "cli\npushfd\npop eax", "sti\nnop\ncli"))
    if choice == 4:
        return f"pushfw\npop ax\npush word {imm(rng) & 0xBEFF | 2:#x}\npopfw"
    return f"mov ax, {rng.choice(SELECTORS):#x}\n{rng.choice(('verr', 'verw'))} ax\nsetz bl"


def far_transfer(rng):
    selector = rng.choice(FAR_TARGETS)
    choice = rng.randrange(4)
    if choice == 0:
        return f"jmp {selector:#x}:.t\nnop\n.t:"
    if choice == 1:
        return f"call {selector:#x}:.t\njmp .done\n.t:\nretf\n.done:"
    if choice == 2:
        return f"push dword {selector:#x}\npush dword .t\nretf\n.t:"
    eflags = rng.choice((0x2, 0x202, 0x3002, 0x1202, 0x40002))
    return f"push dword {eflags:#x}\npush dword {selector:#x}\npush dword .t\niretd\n.t:"


def segment_load(rng):
    register = rng.choice(("ds", "es", "fs", "gs"))
    choice = rng.randrange(6)
    if choice == 0:
        return f"mov ax, {rng.choice(SELECTORS):#x}\nmov {register}, ax"
    if choice == 1:
        return f"push dword {rng.choice(SELECTORS):#x}\npop {register}"
    if choice == 2:
        return f"mov ax, {rng.choice(STACK_SELECTORS):#x}\nmov ss, ax"
    if choice == 3:
        instruction = rng.choice(("lds", "les", "lfs", "lgs"))
        return (f"mov dword [ss:{SCRATCH + 0xF0:#x}], {imm(rng):#x}\n"
                f"mov word [ss:{SCRATCH + 0xF4:#x}], {rng.choice(SELECTORS):#x}\n"
                f"{instruction} ebx, [ss:{SCRATCH + 0xF0:#x}]")
    if choice == 4:
        return (f"mov [ss:{SCRATCH + 0xF8:#x}], esp\n"
                f"mov word [ss:{SCRATCH + 0xFC:#x}], {rng.choice(STACK_SELECTORS):#x}\n"
                f"lss esp, [ss:{SCRATCH + 0xF8:#x}]")
    return rng.choice(("mov ax, cs", "mov ax, ss", "push cs\npop eax", "push ss\npop eax",
                       f"mov eax, {register}", f"push {register}\npop {register}"))


def port_io(rng):
    port = rng.choice(PORTS)
    width = rng.choice(("al", "ax", "eax"))
    if rng.random() < 0.5:
        return f"mov dx, {port:#x}\nin {width}, dx"
    if port == 0xE9:
        port = 0x80
    return f"mov dx, {port:#x}\nmov eax, {imm(rng):#x}\nout dx, {width}"


def software_interrupt(rng):
    return rng.choice((f"int {rng.randrange(256):#x}", "int3", "add eax, 0x7fffffff\ninto",
                       "db 0xf1 ; int1", "ud2", f"int {rng.randrange(0x40, 0x45):#x}"))


def system(rng):
    return rng.choice(("clts", "wbinvd", "invlpg [0x1000]", "mov eax, dr7", "mov ebx, dr6",
                       f"mov eax, {imm(rng):#x}\nmov dr0, eax\nmov ebx, dr0",
                       f"mov ax, {rng.randrange(16):#x}\nlmsw ax", "nop"))


def stack(rng):
    return rng.choice((f"push {gpr(rng)}\npop {gpr(rng)}", "pushad\npopad",
                       f"push dword {imm(rng):#x}\npop {gpr(rng)}", "enter 16, 0\nleave"))


USER_KINDS = ("arithmetic", "flags", "port_io", "segment_load", "software_interrupt",
              "descriptor_table", "control_register")


def user_mode(rng):
    """To ring 3 by IRET or RETF, a few ops there, and back through an event (UD2 at the end)."""
    body = "\n".join(KINDS[rng.choice(USER_KINDS)](rng) for _ in range(rng.randint(1, 3)))
    if rng.random() < 0.5:
        enter = (f"push dword {USER_DS:#x}\npush dword {USER_STACK:#x}\n"
                 f"push dword {rng.choice((0x2, 0x202, 0x3202)):#x}\npush dword {USER_CS:#x}\n"
                 f"push dword .user\niretd")
    else:
        enter = (f"push dword {USER_DS:#x}\npush dword {USER_STACK:#x}\npush dword {USER_CS:#x}\n"
                 f"push dword .user\nretf")
    return f"{enter}\n.user:\n{body}\nud2"


def halt(rng):
    return "hlt"


KINDS: dict[str, Callable[[random.Random], str]] = {
    "arithmetic": arithmetic, "division": division, "cpuid": cpuid, "msr": msr,
    "control_register": control_register, "descriptor_table": descriptor_table, "flags": flags,
    "far_transfer": far_transfer, "segment_load": segment_load, "port_io": port_io,
    "software_interrupt": software_interrupt, "system": system, "stack": stack,
    "user_mode": user_mode, "halt": halt,
}
WEIGHTS = {"halt": 0.05, "user_mode": 0.5}


def random_op(rng: random.Random) -> Op:
    kinds = list(KINDS)
    kind = rng.choices(kinds, [WEIGHTS.get(k, 1.0) for k in kinds])[0]
    return Op(kind, KINDS[kind](rng))
