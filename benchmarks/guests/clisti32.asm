; clisti32: CLI and STI in a 32-bit kernel loop: what an exit-free inline translation costs
;
; Boots into flat 32-bit protected mode, then runs `iterations` passes of a loop of 10
; instructions, two of them CLI and STI around a short critical section (the compute32 loop's
; arithmetic). Under trap each CLI and STI is a VM exit; under bt they are inline sites that run in
; place on the virtual IF; under native and vtx they are plain instructions. Exits with status 0.

bits 16
org 0x7c00

KERNEL_CS   equ 0x08
KERNEL_DS   equ 0x10
STACK_TOP   equ 0x90000
BUFFER      equ 0x100000
DEBUG_EXIT  equ 0xf4

start:
    jmp main

align 4
params:
    db "BNCH"
iterations: dd 1000000
variant:    dd 0                ; unused
entry32:    dd bench32

main:
    cli
    xor ax, ax
    mov ds, ax
    lgdt [gdt_descriptor]
    mov eax, cr0
    or eax, 1                   ; CR0.PE
    mov cr0, eax
    jmp dword KERNEL_CS:protected_mode

bits 32
protected_mode:
    mov ax, KERNEL_DS
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov esp, STACK_TOP

bench32:
    mov ecx, [iterations]
    mov esi, BUFFER
    mov eax, 12345
    xor edi, edi
compute_loop:
    cli
    imul eax, eax, 1103515245
    add eax, 12345
    mov edx, eax
    shr edx, 14
    xor edi, edx
    rol edi, 1
    sti
    dec ecx
    jnz compute_loop

    xor al, al
    out DEBUG_EXIT, al
    hlt

align 8
gdt:
    dq 0                        ; 0x00: null
    dw 0xffff, 0x0000           ; 0x08: code, base 0, limit 4 GiB, 32-bit, DPL 0, execute/read
    db 0x00, 0x9a, 0xcf, 0x00
    dw 0xffff, 0x0000           ; 0x10: data, base 0, limit 4 GiB, 32-bit, DPL 0, read/write
    db 0x00, 0x92, 0xcf, 0x00
gdt_end:

gdt_descriptor:
    dw gdt_end - gdt - 1
    dd gdt
