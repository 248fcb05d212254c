"""emu.asm: encodings checked against the Intel SDM (hand-written bytes) and capstone, the NASM
dialect, keystone's known bugs, the capstone guard, error reporting, and byte equality with nasm."""

import random
import shutil
import subprocess
from pathlib import Path

import capstone
import pytest

from emu.asm import AsmError, Image, ListingLine, assemble, assemble_file
from emu.asm import encode, keystone_glue

NASM = shutil.which("nasm")
needs_nasm = pytest.mark.skipif(NASM is None, reason="nasm is not installed (apt-get install nasm)")


def code_of(source: str) -> bytes:
    return assemble(source).code


def one(bits: int, line: str) -> bytes:
    return code_of(f"bits {bits}\n{line}\n")


def capstone_decode(code: bytes, bits: int, address: int = 0):
    engine = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_16 if bits == 16
                         else capstone.CS_MODE_32)
    engine.detail = True
    return list(engine.disasm(code, address))


# bits | source | SDM encoding | capstone's reading | operand-size attribute (16/32)
SYSTEM = """
32 | lgdt [0x5000]           | 0f 01 15 00 50 00 00 | lgdt [0x5000]              | 32
32 | lidt [0x5000]           | 0f 01 1d 00 50 00 00 | lidt [0x5000]              | 32
32 | sgdt [0x5000]           | 0f 01 05 00 50 00 00 | sgdt [0x5000]              | 32
32 | sidt [0x5000]           | 0f 01 0d 00 50 00 00 | sidt [0x5000]              | 32
32 | lgdt [eax]              | 0f 01 10             | lgdt [eax]                 | 32
32 | lidt [ebx+8]            | 0f 01 5b 08          | lidt [ebx + 8]             | 32
32 | sldt ax                 | 66 0f 00 c0          | sldt ax                    | 16
32 | sldt eax                | 0f 00 c0             | sldt eax                   | 32
32 | str ax                  | 66 0f 00 c8          | str ax                     | 16
32 | str eax                 | 0f 00 c8             | str eax                    | 32
32 | smsw ax                 | 66 0f 01 e0          | smsw ax                    | 16
32 | smsw eax                | 0f 01 e0             | smsw eax                   | 32
32 | lldt ax                 | 0f 00 d0             | lldt ax                    | 32
32 | lldt [0x100]            | 0f 00 15 00 01 00 00 | lldt word ptr [0x100]      | 32
32 | ltr ax                  | 0f 00 d8             | ltr ax                     | 32
32 | lmsw ax                 | 0f 01 f0             | lmsw ax                    | 32
32 | clts                    | 0f 06                | clts                       | 32
32 | invlpg [eax]            | 0f 01 38             | invlpg byte ptr [eax]      | 32
32 | invlpg [0x1000]         | 0f 01 3d 00 10 00 00 | invlpg byte ptr [0x1000]   | 32
32 | mov cr0, eax            | 0f 22 c0             | mov cr0, eax               | 32
32 | mov eax, cr0            | 0f 20 c0             | mov eax, cr0               | 32
32 | mov cr3, ebx            | 0f 22 db             | mov cr3, ebx               | 32
32 | mov ecx, cr2            | 0f 20 d1             | mov ecx, cr2               | 32
32 | mov cr4, eax            | 0f 22 e0             | mov cr4, eax               | 32
32 | rdmsr                   | 0f 32                | rdmsr                      | 32
32 | wrmsr                   | 0f 30                | wrmsr                      | 32
32 | cpuid                   | 0f a2                | cpuid                      | 32
32 | in al, 0x60             | e4 60                | in al, 0x60                | 32
32 | in ax, 0x60             | 66 e5 60             | in ax, 0x60                | 16
32 | in eax, 0x60            | e5 60                | in eax, 0x60               | 32
32 | in al, dx               | ec                   | in al, dx                  | 32
32 | in ax, dx               | 66 ed                | in ax, dx                  | 16
32 | in eax, dx              | ed                   | in eax, dx                 | 32
32 | out 0x80, al            | e6 80                | out 0x80, al               | 32
32 | out 0x80, ax            | 66 e7 80             | out 0x80, ax               | 16
32 | out 0x80, eax           | e7 80                | out 0x80, eax              | 32
32 | out dx, al              | ee                   | out dx, al                 | 32
32 | out dx, ax              | 66 ef                | out dx, ax                 | 16
32 | out dx, eax             | ef                   | out dx, eax                | 32
32 | int 0x21                | cd 21                | int 0x21                   | 32
32 | int 3                   | cd 03                | int 3                      | 32
32 | int3                    | cc                   | int3                       | 32
32 | cli                     | fa                   | cli                        | 32
32 | sti                     | fb                   | sti                        | 32
32 | hlt                     | f4                   | hlt                        | 32
32 | pushf                   | 9c                   | pushfd                     | 32
32 | popf                    | 9d                   | popfd                      | 32
32 | pushfd                  | 9c                   | pushfd                     | 32
32 | popfd                   | 9d                   | popfd                      | 32
32 | pushfw                  | 66 9c                | pushf                      | 16
32 | popfw                   | 66 9d                | popf                       | 16
32 | push cs                 | 0e                   | push cs                    | 32
32 | push ss                 | 16                   | push ss                    | 32
32 | push ds                 | 1e                   | push ds                    | 32
32 | push es                 | 06                   | push es                    | 32
32 | push fs                 | 0f a0                | push fs                    | 32
32 | push gs                 | 0f a8                | push gs                    | 32
32 | pop ds                  | 1f                   | pop ds                     | 32
32 | pop es                  | 07                   | pop es                     | 32
32 | pop ss                  | 17                   | pop ss                     | 32
32 | pop fs                  | 0f a1                | pop fs                     | 32
32 | pop gs                  | 0f a9                | pop gs                     | 32
32 | mov ax, cs              | 66 8c c8             | mov ax, cs                 | 16
32 | mov eax, cs             | 8c c8                | mov eax, cs                | 32
32 | mov ds, ax              | 8e d8                | mov ds, eax                | 32
32 | mov ss, ax              | 8e d0                | mov ss, eax                | 32
32 | lar eax, ebx            | 0f 02 c3             | lar eax, ebx               | 32
32 | lar ax, bx              | 66 0f 02 c3          | lar ax, bx                 | 16
32 | lsl eax, ebx            | 0f 03 c3             | lsl eax, ebx               | 32
32 | verr ax                 | 0f 00 e0             | verr ax                    | 32
32 | verw ax                 | 0f 00 e8             | verw ax                    | 32
32 | verr [0x100]            | 0f 00 25 00 01 00 00 | verr word ptr [0x100]      | 32
32 | ret                     | c3                   | ret                        | 32
32 | ret 8                   | c2 08 00             | ret 8                      | 32
32 | retf                    | cb                   | retf                       | 32
32 | retf 4                  | ca 04 00             | retf 4                     | 32
32 | iret                    | cf                   | iretd                      | 32
32 | iretd                   | cf                   | iretd                      | 32
32 | iretw                   | 66 cf                | iret                       | 16
32 | push 0x10               | 6a 10                | push 0x10                  | 32
32 | push 0x1234             | 68 34 12 00 00       | push 0x1234                | 32
32 | push -1                 | 6a ff                | push -1                    | 32
32 | push 0x80               | 68 80 00 00 00       | push 0x80                  | 32
32 | push word 0x10          | 66 6a 10             | push 0x10                  | 16
32 | push dword 0x10         | 6a 10                | push 0x10                  | 32
32 | lea eax, [ebx+ecx*4+8]  | 8d 44 8b 08          | lea eax, [ebx + ecx*4 + 8] | 32
32 | lea esi, [esp+4]        | 8d 74 24 04          | lea esi, [esp + 4]         | 32
32 | rep movsd    | f3 a5    | rep movsd dword ptr es:[edi], dword ptr [esi]   | 32
32 | rep movsb    | f3 a4    | rep movsb byte ptr es:[edi], byte ptr [esi]     | 32
32 | rep stosd               | f3 ab                | rep stosd dword ptr es:[edi], eax | 32
32 | rep movsw    | f3 66 a5 | rep movsw word ptr es:[edi], word ptr [esi]     | 16
32 | repe cmpsb   | f3 a6    | repe cmpsb byte ptr [esi], byte ptr es:[edi]    | 32
32 | repne scasb             | f2 ae                | repne scasb al, byte ptr es:[edi] | 32
32 | div ecx                 | f7 f1                | div ecx                    | 32
32 | div dword [ebx]         | f7 33                | div dword ptr [ebx]        | 32
32 | div word [ebx]          | 66 f7 33             | div word ptr [ebx]         | 16
32 | div byte [ebx]          | f6 33                | div byte ptr [ebx]         | 32
32 | jmp 0x08:0x12345        | ea 45 23 01 00 08 00 | ljmp 8:0x12345             | 32
32 | jmp dword 0x08:0x12345  | ea 45 23 01 00 08 00 | ljmp 8:0x12345             | 32
32 | jmp word 0x08:0x1234    | 66 ea 34 12 08 00    | ljmp 8:0x1234              | 16
32 | call 0x08:0x12345       | 9a 45 23 01 00 08 00 | lcall 8, 0x12345           | 32
32 | jmp far [eax]           | ff 28                | jmp ptr [eax]              | 32
32 | call far [eax]          | ff 18                | call ptr [eax]             | 32
32 | jmp far [0x5000]        | ff 2d 00 50 00 00    | jmp ptr [0x5000]           | 32
16 | lgdt [0x5000]           | 0f 01 16 00 50       | lgdt [0x5000]              | 16
16 | lidt [0x5000]           | 0f 01 1e 00 50       | lidt [0x5000]              | 16
16 | sgdt [bx]               | 0f 01 07             | sgdt [bx]                  | 16
16 | sidt [0x100]            | 0f 01 0e 00 01       | sidt [0x100]               | 16
16 | o32 lgdt [0x5000]       | 66 0f 01 16 00 50    | lgdt [0x5000]              | 32
16 | lgdt [eax]              | 67 0f 01 10          | lgdt [eax]                 | 16
16 | sldt ax                 | 0f 00 c0             | sldt ax                    | 16
16 | str ax                  | 0f 00 c8             | str ax                     | 16
16 | smsw ax                 | 0f 01 e0             | smsw ax                    | 16
16 | lldt ax                 | 0f 00 d0             | lldt ax                    | 16
16 | ltr ax                  | 0f 00 d8             | ltr ax                     | 16
16 | lmsw ax                 | 0f 01 f0             | lmsw ax                    | 16
16 | clts                    | 0f 06                | clts                       | 16
16 | mov eax, cr0            | 0f 20 c0             | mov eax, cr0               | 16
16 | mov cr0, eax            | 0f 22 c0             | mov cr0, eax               | 16
16 | mov cr3, eax            | 0f 22 d8             | mov cr3, eax               | 16
16 | rdmsr                   | 0f 32                | rdmsr                      | 16
16 | wrmsr                   | 0f 30                | wrmsr                      | 16
16 | cpuid                   | 0f a2                | cpuid                      | 16
16 | in al, 0x60             | e4 60                | in al, 0x60                | 16
16 | in ax, 0x60             | e5 60                | in ax, 0x60                | 16
16 | in eax, 0x60            | 66 e5 60             | in eax, 0x60               | 32
16 | in ax, dx               | ed                   | in ax, dx                  | 16
16 | in eax, dx              | 66 ed                | in eax, dx                 | 32
16 | out dx, al              | ee                   | out dx, al                 | 16
16 | out 0x80, ax            | e7 80                | out 0x80, ax               | 16
16 | out dx, eax             | 66 ef                | out dx, eax                | 32
16 | int 0x10                | cd 10                | int 0x10                   | 16
16 | cli                     | fa                   | cli                        | 16
16 | sti                     | fb                   | sti                        | 16
16 | hlt                     | f4                   | hlt                        | 16
16 | pushf                   | 9c                   | pushf                      | 16
16 | popf                    | 9d                   | popf                       | 16
16 | pushfd                  | 66 9c                | pushfd                     | 32
16 | popfd                   | 66 9d                | popfd                      | 32
16 | pushfw                  | 9c                   | pushf                      | 16
16 | push cs                 | 0e                   | push cs                    | 16
16 | push ss                 | 16                   | push ss                    | 16
16 | push fs                 | 0f a0                | push fs                    | 16
16 | pop ds                  | 1f                   | pop ds                     | 16
16 | pop es                  | 07                   | pop es                     | 16
16 | pop gs                  | 0f a9                | pop gs                     | 16
16 | mov ax, cs              | 8c c8                | mov ax, cs                 | 16
16 | mov eax, cs             | 66 8c c8             | mov eax, cs                | 32
16 | mov ds, ax              | 8e d8                | mov ds, ax                 | 16
16 | mov es, ax              | 8e c0                | mov es, ax                 | 16
16 | lar ax, bx              | 0f 02 c3             | lar ax, bx                 | 16
16 | lsl ax, bx              | 0f 03 c3             | lsl ax, bx                 | 16
16 | lar eax, ebx            | 66 0f 02 c3          | lar eax, ebx               | 32
16 | verr ax                 | 0f 00 e0             | verr ax                    | 16
16 | verw ax                 | 0f 00 e8             | verw ax                    | 16
16 | ret                     | c3                   | ret                        | 16
16 | ret 2                   | c2 02 00             | ret 2                      | 16
16 | retf                    | cb                   | retf                       | 16
16 | retf 2                  | ca 02 00             | retf 2                     | 16
16 | retfd                   | 66 cb                | retf                       | 32
16 | iret                    | cf                   | iret                       | 16
16 | iretd                   | 66 cf                | iretd                      | 32
16 | iretw                   | cf                   | iret                       | 16
16 | push 0x10               | 6a 10                | push 0x10                  | 16
16 | push 0x1234             | 68 34 12             | push 0x1234                | 16
16 | push dword 0x12345678   | 66 68 78 56 34 12    | push 0x12345678            | 32
16 | push word 0x10          | 6a 10                | push 0x10                  | 16
16 | jmp 0x08:0x1234         | ea 34 12 08 00       | ljmp 8:0x1234              | 16
16 | jmp dword 0x08:0x12345  | 66 ea 45 23 01 00 08 00 | ljmp 8:0x12345          | 32
16 | call 0x08:0x1234        | 9a 34 12 08 00       | lcall 8, 0x1234            | 16
16 | call dword 0x08:0x12345 | 66 9a 45 23 01 00 08 00 | lcall 8, 0x12345        | 32
16 | jmp far [bx]            | ff 2f                | ljmp [bx]                  | 16
16 | call far [bx]           | ff 1f                | lcall [bx]                 | 16
16 | jmp far dword [bx]      | 66 ff 2f             | jmp ptr [bx]               | 32
16 | lea ax, [bx+si+4]       | 8d 40 04             | lea ax, [bx + si + 4]      | 16
16 | lea eax, [ebx+ecx*4+8]  | 66 67 8d 44 8b 08    | lea eax, [ebx + ecx*4 + 8] | 32
16 | rep movsb               | f3 a4                | rep movsb byte ptr es:[di], byte ptr [si] | 16
16 | rep movsw               | f3 a5                | rep movsw word ptr es:[di], word ptr [si] | 16
16 | rep movsd    | f3 66 a5 | rep movsd dword ptr es:[di], dword ptr [si]     | 32
16 | rep stosw               | f3 ab                | rep stosw word ptr es:[di], ax | 16
16 | div cx                  | f7 f1                | div cx                     | 16
16 | div word [bx]           | f7 37                | div word ptr [bx]          | 16
16 | div dword [bx]          | 66 f7 37             | div dword ptr [bx]         | 32
16 | invlpg [bx]             | 0f 01 3f             | invlpg byte ptr [bx]       | 16
16 | invlpg [eax]            | 67 0f 01 38          | invlpg byte ptr [eax]      | 16
16 | mov ax, [es:di]         | 26 8b 05             | mov ax, word ptr es:[di]   | 16
"""
SYSTEM_CASES = [tuple(field.strip() for field in row.split("|"))
                for row in SYSTEM.strip().splitlines()]


@pytest.mark.parametrize("bits,source,sdm,reading,opsize", SYSTEM_CASES,
                         ids=[f"{c[0]}:{c[1]}" for c in SYSTEM_CASES])
def test_system_instruction_encoding(bits, source, sdm, reading, opsize):
    code = one(int(bits), source)
    assert code.hex(" ") == sdm
    (insn,) = capstone_decode(code, int(bits))
    assert insn.size == len(code)
    assert f"{insn.mnemonic} {insn.op_str}".strip() == reading
    operand_size = 48 - int(bits) if insn.prefix[2] == 0x66 else int(bits)
    assert operand_size == int(opsize)


# Where NASM and keystone pick different (valid) encodings, we must pick NASM's.
NASM_CHOICES = [
    (32, "xchg bl, cl", "86 d9"),            # first operand in ModRM.reg
    (32, "xchg ecx, edx", "87 ca"),
    (16, "xchg cx, dx", "87 ca"),
    (32, "xchg eax, ebx", "93"),
    (16, "xchg ax, ax", "90"),
    (32, "mov eax, [eax*2]", "8b 04 00"),     # [eax*2] is split into [eax+eax]
    (32, "lea eax, [eax*3]", "8d 04 40"),
    (32, "mov eax, [eax+esp]", "8b 04 04"),   # esp can only be the base
    (32, "mov eax, [ebp+eax]", "8b 44 05 00"),
    (16, "mov ax, [si+bx]", "8b 00"),
    (16, "mov al, [bx+0xfffe]", "8a 47 fe"),  # 16-bit displacements wrap
    (16, "xor [bp+si], bh", "30 3a"),         # no disp8 for [bp+si]
    (32, "idiv word [bp+di]", "66 67 f7 3b"),
    (16, "movzx ax, [bx]", "0f b6 07"),       # a 16-bit destination implies a byte source
    (16, "mov ds, eax", "8e d8"),
    (32, "mov word [bx], ds", "67 8c 1f"),
    (32, "mov eax, [ds:ebx]", "3e 8b 03"),    # explicit default segment is kept
    (32, "mov eax, [ss:esp+4]", "36 8b 44 24 04"),
    (16, "lock add dword [es:eax], 1", "f0 26 66 67 83 00 01"),  # prefix order
    (16, "rep es movsb", "f3 26 a4"),
    (32, "fs lodsb", "64 ac"),
    (32, "mov [ebx], dword 5", "c7 03 05 00 00 00"),
    (32, "add eax, dword 5", "83 c0 05"),
    (32, "add eax, strict dword 5", "05 05 00 00 00"),
    (32, "push byte -1", "6a ff"),
    (16, "push 0xffff", "6a ff"),
    (16, "push 0xff", "68 ff 00"),
    (32, "and ax, 0xfff0", "66 83 e0 f0"),
    (32, "lar edx, bp", "0f 02 d5"),           # keystone only accepts 'lar edx, ebp'
    (16, "lsl eax, bx", "66 0f 03 c3"),
]


@pytest.mark.parametrize("bits,source,expected", NASM_CHOICES,
                         ids=[f"{c[0]}:{c[1]}" for c in NASM_CHOICES])
def test_nasm_encoding_choices(bits, source, expected):
    assert one(bits, source).hex(" ") == expected


def test_relative_transfers_16():
    code = code_of("""
        bits 16
        org 0x7c00
        start:  call func
                jmp start
                nop
        func:   ret
                push func
                jmp near func
                call dword func
                jz func
                jnz near func
                loop func
                jcxz func
                jecxz func
    """)
    assert code.hex(" ") == ("e8 03 00  eb fb  90  c3  68 06 7c  e9 f9 ff  66 e8 f3 ff ff ff  74 f1"
                             "  0f 85 ed ff  e2 eb  e3 e9  67 e3 e6").replace("  ", " ")


def test_relative_transfers_32():
    code = code_of("""
        bits 32
        org 0x100000
        start:  call func
                jmp short func
        func:   ret
                push func
                jmp func
                jecxz func
                jcxz func
                jmp near func
                jne func
    """)
    assert code.hex(" ") == ("e8 02 00 00 00  eb 00  c3  68 07 00 10 00  eb f8  e3 f6  67 e3 f3"
                             "  e9 ee ff ff ff  75 ec").replace("  ", " ")


@pytest.mark.parametrize("gap,expected", [(127, "eb 7f"), (128, "e9 80 00")])
def test_forward_jump_picks_short_when_it_fits(gap, expected):
    code = code_of(f"bits 16\njmp target\ntimes {gap} nop\ntarget: hlt\n")
    assert code[:len(bytes.fromhex(expected))].hex(" ") == expected


@pytest.mark.parametrize("gap,expected", [(126, "eb 80"), (127, "e9 7e ff")])
def test_backward_jump_picks_short_when_it_fits(gap, expected):
    code = code_of(f"bits 16\ntarget: times {gap} nop\njmp target\n")
    assert code[gap:].hex(" ") == expected


def test_growing_jump_pushes_an_earlier_jump_to_near():
    code = code_of("bits 16\nj1: jmp l\ntimes 125 nop\nj2: jmp far_t\nl: nop\ntimes 200 nop\n"
                   "far_t: nop\n")
    expected = (bytes.fromhex("e98000") + b"\x90" * 125 + bytes.fromhex("e9c900") + b"\x90" * 202)
    assert code == expected


def test_label_values_use_full_width_forms_like_nasm():
    code = code_of("""
        bits 32
        lab: db 0
             push lab
             add eax, lab
             mov eax, [ebx+lab]
             push 5
             push strict dword 5
             push lab2 - lab
        lab2:
    """)
    assert code.hex(" ") == ("00 68 00 00 00 00 05 00 00 00 00 8b 83 00 00 00 00 6a 05"
                             " 68 05 00 00 00 6a 1a")


def test_data_directives():
    code = code_of("""
        db 1, 2, 'ab', "c", 0
        dw 0x1234, 'abc'
        dd 0x12345678, 'a'
        dq 0x1122334455667788
        db `a\\n\\r\\t\\0\\\\\\x41\\101`
        db -1, 255
        dw -2
    """)
    assert code.hex(" ") == ("01 02 61 62 63 00 34 12 61 62 63 00 78 56 34 12 61 00 00 00 "
                             "88 77 66 55 44 33 22 11 61 0a 0d 09 00 5c 41 41 ff ff fe ff")


def test_times_align_reserve_and_dollars():
    code = code_of("""
        org 0x10
        times 3 db 0xaa
        times 2 dw $
        align 4
        db 1
        align 8, db 0
        resb 2
        resw 1
        dw $ - $$
        times 24 - ($ - $$) db 0xee
    """)
    assert code.hex(" ") == ("aa aa aa 13 00 13 00 90 01 00 00 00 00 00 00 00 00 00 00 00 "
                             "14 00 ee ee")


def test_expressions_and_numbers():
    code = code_of("""
        dd (1+2)*3, 1<<4, 0x100>>4, ~0, 7/2, 7 % 3, -7//2, -7 %% 2
        dd 0x0f & 0x3c, 1|2, 6^3, 'AB', -(2+3), 2+3*4
        db 0ffh, 0b101, 101b, 17o, 0o17, 0x1_0, 10, 0Ah
    """)
    words = [9, 16, 16, 0xFFFFFFFF, 3, 1, 0xFFFFFFFD, 0xFFFFFFFF, 0x0C, 3, 5, 0x4241,
             0xFFFFFFFB, 14]
    expected = b"".join(w.to_bytes(4, "little") for w in words) + bytes(
        [0xFF, 5, 5, 15, 15, 16, 10, 10])
    assert code == expected


def test_defines_equ_and_local_labels():
    image = assemble("""
        %define BASE 0x1000
        bits 32
        org BASE
        main:
        .loop:  jmp .loop
                jmp other.loop
        other:
        .loop:  jmp main.loop
                mov eax, SIZE
                db 'BASE'
        SIZE equ end - main
        end:
    """)
    assert image.code.hex(" ") == "eb fe eb 00 eb fa b8 0f 00 00 00 42 41 53 45"
    assert image.symbols == {"main": 0x1000, "main.loop": 0x1000, "other": 0x1004,
                             "other.loop": 0x1004, "SIZE": 15, "end": 0x100F}
    assert image.origin == 0x1000


def test_labels_are_the_symbols_that_are_addresses():
    """As NASM's ELF output sorts them: labels and `equ` of a label expression are addresses,
    constants and label differences are not."""
    image = assemble("""
        org 0x7c00
        PORT    equ 0x3f8
        start:  nop
        .spin:  jmp .spin
        here    equ $
        after   equ start.spin + 2
        length  equ after - start
        size    equ $ - $$
        msg:    db 'x'
    """)
    assert image.labels == {"start": 0x7C00, "start.spin": 0x7C01, "here": 0x7C03,
                            "after": 0x7C03, "msg": 0x7C03}
    assert image.symbols == {**image.labels, "PORT": 0x3F8, "length": 3, "size": 3}


def test_case_insensitive_mnemonics_registers_and_directives():
    assert code_of("BITS 32\nMOV EAX, EBX\nJmp Short $\nDB 1\n").hex(" ") == "89 d8 eb fe 01"


def test_bits_switches_and_bracket_forms():
    code = code_of("[bits 16]\npush ax\nuse32\npush ax\n[BITS 16]\npush eax\nbits 32\npush eax\n")
    assert code.hex(" ") == "50 66 50 66 50 50"


def test_listing_maps_addresses_to_source_lines(tmp_path):
    (tmp_path / "lib.inc").write_text("helper:\n    ret\n")
    source = tmp_path / "main.asm"
    source.write_text("bits 16\norg 0x7c00\nstart: cli\n%include \"lib.inc\"\n"
                      "times 3 nop\nmsg db 'hi', 0\nlabel_only:\n")
    image = assemble_file(source)
    assert isinstance(image, Image)
    assert image.listing == [
        ListingLine(0x7C00, 1, 16, str(source), 3, "start: cli"),
        ListingLine(0x7C01, 1, 16, str(tmp_path / "lib.inc"), 2, "ret"),
        ListingLine(0x7C02, 3, 16, str(source), 5, "times 3 nop"),
        ListingLine(0x7C05, 3, 16, str(source), 6, "msg db 'hi', 0"),
    ]
    assert image.symbols == {"start": 0x7C00, "helper": 0x7C01, "msg": 0x7C05,
                             "label_only": 0x7C08}


def test_include_dirs_are_searched_after_the_including_directory(tmp_path):
    (tmp_path / "inc").mkdir()
    (tmp_path / "inc" / "defs.inc").write_text("%define VALUE 7\n")
    (tmp_path / "defs.inc").write_text("%define VALUE 9\n")
    source = "%include \"defs.inc\"\ndb VALUE\n"
    assert assemble(source, include_dirs=[tmp_path / "inc"]).code == b"\x07"
    (tmp_path / "main.asm").write_text(source)
    assert assemble_file(tmp_path / "main.asm", include_dirs=[tmp_path / "inc"]).code == b"\x09"


def test_keystone_16bit_bugs_are_encoded_correctly():
    """notes/unicorn-x86.md section 8: keystone emits these with a 0x66 in 16-bit code."""
    code = code_of("bits 16\norg 0x100\nf: call f\nret\nret 2\npush 0x10\nretf\n"
                   "jmp f\ntimes 200 nop\njmp f\n")
    assert code[:12].hex(" ") == "e8 fd ff c3 c2 02 00 6a 10 cb eb f4"
    assert code[-3:].hex(" ") == "e9 29 ff"


def test_fix_up_tables_disabled_every_known_keystone_bug_is_rejected(monkeypatch):
    """The capstone guard on its own turns keystone's known mis-encodings into errors."""
    monkeypatch.setattr(encode, "_HAND_ENCODERS", {})
    monkeypatch.setattr(keystone_glue, "_NO_OPSIZE", set())
    cases = [(32, "lgdt [0x5000]"), (32, "lidt [eax]"), (32, "sgdt [0x5000]"),
             (32, "sidt [0x5000]"), (16, "call 0x100"), (16, "ret"), (16, "ret 2"),
             (16, "push 0x10"), (16, "retf"), (16, "jmp 0x300"), (32, "iret"),
             (32, "push ds"), (32, "pushf"), (16, "push fs")]
    for bits, line in cases:
        with pytest.raises(AsmError) as caught:
            assemble(f"bits {bits}\n{line}\n", filename="k.asm")
        assert (caught.value.filename, caught.value.lineno, caught.value.line) == ("k.asm", 2, line)
        assert caught.value.message.startswith(f"keystone encoded '{line}' as 66 ")


@pytest.mark.parametrize("line,fake,problem", [
    ("mov eax, ebx", "66 89 d8", "operand-size prefix"),
    ("mov eax, ebx", "89", "cannot decode"),
    ("mov eax, ebx", "89 d8 90", "decodes 2 of the 3 bytes"),
    ("mov eax, ebx", "01 d8", "a different instruction"),
    ("mov eax, ebx", "89 c8", "register ebx is missing"),
    ("mov eax, [ebx]", "67 8b 03", "address-size prefix"),
    ("mov eax, [ebx]", "8b 07", "memory operand differs"),
    ("mov eax, 0x1234", "b8 34 12 00 01", "immediate"),
    ("add dword [ebx], 5", "66 83 03 05", "operand-size prefix"),
])
def test_guard_rejects_wrong_keystone_output(monkeypatch, line, fake, problem):
    monkeypatch.setattr(keystone_glue, "_KS_CACHE", {})
    monkeypatch.setattr(keystone_glue, "_ks_call", lambda bits, text: bytes.fromhex(fake))
    with pytest.raises(AsmError) as caught:
        assemble(f"bits 32\nnop\n{line}\n", filename="g.asm")
    assert (caught.value.filename, caught.value.lineno) == ("g.asm", 3)
    assert caught.value.message.startswith(f"keystone encoded '{line}' as {fake}")
    assert problem in caught.value.message


def test_guard_catches_a_real_unlisted_keystone_bug():
    """keystone drops an index-only 32-bit address in 16-bit code ([0x10] instead of
    [eax*4+0x10]); nothing in the fix-up tables knows this one."""
    with pytest.raises(AsmError) as caught:
        assemble("bits 16\nmov eax, [eax*4+0x10]\n")
    assert "keystone encoded" in caught.value.message
    assert "0x67" in caught.value.message


def test_error_format():
    with pytest.raises(AsmError) as caught:
        assemble("bits 32\n  frobnicate eax  ; comment\n", filename="boot.asm")
    err = caught.value
    assert (err.filename, err.lineno, err.line) == ("boot.asm", 2, "frobnicate eax  ; comment")
    assert err.message == "unknown mnemonic 'frobnicate'"
    assert str(err) == ("boot.asm:2: error: unknown mnemonic 'frobnicate'\n"
                        "    frobnicate eax  ; comment")


@pytest.mark.parametrize("source,lineno,message", [
    ("nop\nmov eax, [ebx\n", 2, "missing ']'"),
    ("jmp nowhere\n", 1, "undefined symbol 'nowhere'"),
    ("a: nop\na: nop\n", 2, "symbol 'a' is already defined"),
    ("x equ 1\nx equ 2\n", 2, "symbol 'x' is already defined"),
    ("mov eax, 3 +\n", 1, "missing expression"),
    ("mov eax, (3\n", 1, "missing ')'"),
    ("mov eax, 0xZZ\n", 1, "invalid number '0xZZ'"),
    ("db 'abc\n", 1, "unterminated string"),
    ("db 256\n", 1, "does not fit in 1 byte"),
    ("times -1 nop\n", 1, "negative"),
    ("bits 32\nmov [ebx], 5\n", 2, "operation size not specified"),
    ("bits 32\nshl [ebx], cl\n", 2, "operation size not specified"),
    ("bits 32\nmovzx eax, [ebx]\n", 2, "operation size not specified"),
    ("bits 32\npush [ebx]\n", 2, "operation size not specified"),
    ("bits 32\npop cs\n", 2, "pop cs is not a valid instruction"),
    ("org 0x100\norg 0x200\n", 2, "program origin redefined"),
    ("bits 64\n", 1, "bits 64 is not supported"),
    ("jmp short far_away\ntimes 200 nop\nfar_away:\n", 1, "short jump out of range"),
    ("l: times 200 nop\nloop l\n", 2, "short jump out of range"),
    ("bits 32\nmov eax, [ebx+ecx+edx]\n", 2, "invalid effective address"),
    ("mov ax, [si+di]\n", 1, "invalid effective address"),
    ("mov ax, [bx*2]\n", 1, "invalid effective address"),
    ("bits 32\nmov eax, [esp*2]\n", 2, "esp cannot be an index"),
    ("section .data\n", 1, "only the .text section"),
    ("global start\n", 1, "unsupported directive 'global'"),
    ("%macro foo 0\n", 1, "unsupported preprocessor directive '%macro'"),
    ("%define F(x) x\n", 1, "macro parameters are not supported"),
    ("bits 32\nmov al, 0x1234\n", 2, "the value 0x1234 does not fit its 1-byte operand"),
    ("bits 32\nmov eax, 0x100000000\n", 2, "does not fit in 32 bits"),
    ("bits 16\nmov ax, [0x12345]\n", 2, "does not fit 16-bit addressing"),
    ("bits 32\nlea eax, [ds:ebx], 1\n", 2, "invalid instruction"),
    ("mov ax, [es:bx]\nfs mov ax, [es:bx]\n", 2, "conflicting segment overrides"),
    ("align 3\n", 1, "not a power of two"),
    ("db 1 2\n", 1, "unexpected '2'"),
    ("mov eax, #1\n", 1, "unexpected character '#'"),
    ("eax: nop\n", 1, "reserved word"),
    ("equ 5\n", 1, "equ needs a label"),
    ("5 nop\n", 1, "expected an instruction"),
    ("retf -1\n", 1, "optional 16-bit byte count"),
    ("bits 32\njmp eax:ebx\n", 2, "selector:offset"),
])
def test_errors_name_file_and_line(source, lineno, message):
    with pytest.raises(AsmError) as caught:
        assemble(source, filename="e.asm")
    err = caught.value
    assert (err.filename, err.lineno) == ("e.asm", lineno)
    assert err.line == source.splitlines()[lineno - 1].strip()
    assert message in err.message
    assert str(err).startswith(f"e.asm:{lineno}: error: ")


@pytest.mark.parametrize("line", [
    "mov eax", "mov eax, ebx, ecx", "add", "mov cr0, 5", "lgdt eax", "in al, 0x100",
    "out 0x80, bl", "mov eax, ds:", "int eax", "ret eax", "push", "jmp", "xyzzy",
    "mov eax, [eax+ebx*3]", "mov ds, cs", "lock", "rep", "movsd xmm0", "call 5:",
    "mov byte [eax], ebx", "lea eax, 5", "mov [eax], [ebx]", "nop nop",
])
def test_keystone_garbage_never_escapes_raw(line):
    for bits in (16, 32):
        with pytest.raises(AsmError) as caught:
            assemble(f"bits {bits}\n{line}\n", filename="junk.asm")
        assert (caught.value.filename, caught.value.lineno) == ("junk.asm", 2)


def test_include_errors(tmp_path):
    (tmp_path / "bad.inc").write_text("nop\n  mov eax, [\n")
    (tmp_path / "a.inc").write_text("%include \"b.inc\"\n")
    (tmp_path / "b.inc").write_text("%include \"a.inc\"\n")
    main = tmp_path / "main.asm"
    main.write_text("nop\n%include \"bad.inc\"\n")
    with pytest.raises(AsmError) as caught:
        assemble_file(main)
    assert (caught.value.filename, caught.value.lineno, caught.value.line) == (
        str(tmp_path / "bad.inc"), 2, "mov eax, [")
    main.write_text("%include \"missing.inc\"\n")
    with pytest.raises(AsmError, match="include file 'missing.inc' not found") as caught:
        assemble_file(main)
    assert (caught.value.filename, caught.value.lineno) == (str(main), 1)
    main.write_text("nop\n%include \"a.inc\"\n")
    with pytest.raises(AsmError, match="include cycle") as caught:
        assemble_file(main)
    assert caught.value.filename == str(tmp_path / "b.inc")


def test_errors_in_a_later_pass_still_name_the_line():
    with pytest.raises(AsmError) as caught:
        assemble("bits 32\njmp fwd\nmov eax, [undefined_thing]\nfwd: ret\n", filename="p.asm")
    assert (caught.value.lineno, caught.value.message) == (3,
                                                           "undefined symbol 'undefined_thing'")


def test_empty_source():
    assert assemble("; nothing\n\n") == Image(b"", 0, {}, {}, [])


# ---------------------------------------------------------------- byte equality with nasm

MIXED = """
; mixed 16/32-bit boot path
[bits 16]
[org 0x7c00]
%include "console.inc"
%define CODE_SEL 0x08
%define DATA_SEL 0x10
boot:
    cli
    cld
    xor ax, ax
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov sp, boot
    mov si, msg
.next:
    lodsb
    or al, al
    jz .done
    call putc
    jmp .next
.done:
    lgdt [gdt.ptr]
    mov eax, cr0
    or al, 1
    mov cr0, eax
    jmp CODE_SEL:pm16
pm16:
    jmp dword CODE_SEL:pm32
msg: db `Hello\\r\\n\\0`
    db 'x', "y", `\\x41\\101\\t\\\\`
align 8
gdt:
    dq 0
    dq 0x00cf9a000000ffff
    dq 0x00cf92000000ffff
.ptr:
    dw $ - gdt - 1
    dd gdt
bits 32
pm32:
    mov ax, DATA_SEL
    mov ds, ax
    mov ss, ax
    mov esp, 0x90000
    lidt [idt_ptr]
    sgdt [scratch]
    sidt [scratch+8]
    str ax
    sldt [scratch]
    smsw eax
    ltr ax
    lldt ax
    lmsw ax
    clts
    invlpg [eax]
    mov cr3, eax
    rdmsr
    wrmsr
    cpuid
    in al, 0x60
    out dx, eax
    lar eax, ebx
    lsl ax, bx
    verr ax
    verw [scratch]
    sti
    push dword 0
    push 0x1000
    push pm32
    push cs
    push ss
    pop ds
    mov ax, cs
    pushfd
    popfd
    pushf
    popf
    call far [farptr]
    jmp far [farptr]
    call CODE_SEL:handler
    rep movsd
    rep stosb
    lea esi, [esi+ecx*4+16]
    div dword [ebx]
    jmp boot.next
handler:
    iretd
    iret
    retf
    retf 8
    ret
    ret 4
farptr: dd handler
    dw CODE_SEL
idt_ptr: dw 0x7ff
    dd 0
scratch: times 16 db 0
bits 16
back16:
    call putc
    ret
    ret 2
    retf
    push 0x10
    push 0x1234
    push dword 0x12345678
    push back16
    iret
    iretd
    pushfd
    popfd
    o32 lgdt [gdt.ptr]
    lidt [bx+si]
    lea eax, [ebx+ecx*4+8]
    mov eax, [es:di]
    jmp far [farptr]
    call dword CODE_SEL:pm32
    times 510-($-$$) db 0
    dw 0xaa55
"""

CONSOLE_INC = """
; shared helper
%define PORT 0x3f8
putc:
    push dx
    mov dx, PORT
    out dx, al
    pop dx
    ret
"""

ORG_ZERO = """
bits 32
org 0
tab: dd 1, 2, 3
start:
    push tab
    push tab+8
    add eax, tab
    add ebx, tab+4
    mov eax, [ebx+tab]
    mov eax, [ebp+tab]
    mov ecx, [tab+ebx*4]
    mov dword [ebx+tab], tab
    cmp eax, tab
    imul eax, ebx, tab+2
    mov eax, tab
    mov al, tab+1
    push strict dword 5
    add eax, strict dword 5
    jmp fwd
    times 100 nop
fwd:
    jmp back
back:
    jne far_away
    jmp short back
    times 120 db 0x90
far_away:
    call start
    loop back2
back2:
    mov eax, len
    db "msg", 0
len equ $ - tab
    align 16
    dw $, $$, $-$$
    align 8, db 0xcc
"""

JUMP_CHAINS = """
bits 16
org 0x100
a1: jz b1
    times 60 nop
a2: jz b2
    times 60 nop
a3: jmp b3
    times 4 nop
b1: jmp a1
    times 50 nop
b2: nop
b3: jmp a3
    times 3 jmp b3
    times 2 loop a3
X equ 5 * Y
Y equ 3
    mov ax, X
    mov ax, Z
Z equ 0x1234
    cmp ax, Y
    push X
bits 32
    push Z
    jmp a1
    jecxz b3
    jcxz b3
"""


def generated_source(seed: int, sections: int = 6, per_section: int = 48) -> str:
    """A ~360-line mix of 16- and 32-bit code with local labels and forward/backward jumps."""
    rng = random.Random(seed)
    forms = {16: ["mov ax, {n}", "add bx, {n}", "cmp al, {b}", "jz .l{j}", "jmp .l{j}",
                  "call fn{k}", "in al, 0x60", "out 0x80, al", "push {n}", "pop ax",
                  "mov si, msg", "lodsb", "int 0x10", "mov [bx+si+{b}], ax", "loop $",
                  "times {p} nop"],
             32: ["mov eax, [ebx+{n}]", "lea esi, [eax+ecx*4+{b}]", "add eax, {n}", "jne .l{j}",
                  "call fn{k}", "push {n}", "mov cr3, eax", "lgdt [gdtr]", "out dx, eax",
                  "rep stosd", "cmp dword [edi], {n}", "jmp .l{j}", "mov ds, ax",
                  "invlpg [eax]", "times {p} nop"]}
    lines, groups = ["bits 16", "org 0x7c00", "start:"], per_section // 6 + 1
    for section in range(sections):
        bits = 16 if section % 2 == 0 else 32
        lines += [f"bits {bits}", f"fn{section}:"]
        for i in range(per_section):
            if i % 6 == 0:
                lines.append(f".l{i // 6}:")
            j = max(0, min(groups - 1, i // 6 + rng.choice((-1, 0, 1))))
            lines.append("    " + rng.choice(forms[bits]).format(
                n=rng.randint(0, 0x3000), b=rng.randint(0, 100), p=rng.randint(0, 150), j=j,
                k=rng.randint(0, sections - 1)))
        lines += [f".l{groups - 1}:", "    ret"]
    return "\n".join(lines + ["msg: db 'hello', 0", "gdtr: dw 0x17", "    dd 0", "align 4"]) + "\n"


def nasm_bytes(path: Path) -> bytes:
    out = path.with_suffix(".bin")
    subprocess.run([NASM, "-f", "bin", "-w-all", "-I", f"{path.parent}/", str(path), "-o",
                    str(out)], check=True, capture_output=True)
    return out.read_bytes()


@needs_nasm
@pytest.mark.parametrize("name,source", [("mixed", MIXED), ("org_zero", ORG_ZERO),
                                         ("jump_chains", JUMP_CHAINS),
                                         ("generated2", generated_source(2)),
                                         ("generated7", generated_source(7)),
                                         ("generated11", generated_source(11, 4, 60))])
def test_byte_equal_with_nasm(tmp_path, name, source):
    (tmp_path / "console.inc").write_text(CONSOLE_INC)
    path = tmp_path / f"{name}.asm"
    path.write_text(source)
    ours = assemble_file(path).code
    assert ours == nasm_bytes(path)


def test_generated_source_really_mixes_sizes():
    """Guard against the nasm comparison passing vacuously."""
    sizes = set()
    for seed in (2, 7):
        listing = assemble(generated_source(seed)).listing
        assert {line.bits for line in listing} == {16, 32}
        assert len(listing) > 280
        sizes |= {(line.bits, line.size) for line in listing if line.text.startswith("j")}
    assert {(16, 2), (16, 3), (16, 4), (32, 2), (32, 5), (32, 6)} <= sizes
