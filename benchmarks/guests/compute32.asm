; compute32: a CPU-bound 32-bit guest for `trapvisor bench` (benchmarks/overhead.py, peers.py)
;
; Boots into flat 32-bit protected mode, then runs `iterations` passes of a loop of 10
; instructions: a linear congruential generator (IMUL/ADD) whose output picks a dword in a 64 KiB
; buffer at 1 MiB, read-modify-written and folded into a checksum. Under the trap engine nothing
; in the loop is privileged, so it should run at the bare machine's speed. `entry32` lets the
; benchmark start a bare CPU directly in the 32-bit part. Exits with status 0 (the checksum is
; left in EDI).

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
    imul eax, eax, 1103515245
    add eax, 12345
    mov edx, eax
    shr edx, 14
    and edx, 0xfffc             ; a dword in the 64 KiB buffer
    add [esi + edx], eax
    xor edi, [esi + edx]
    rol edi, 1
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
