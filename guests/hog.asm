; hog: a CPU-bound guest: 4,000,000 rounds of xorshift32 (44 million instructions), no I/O between
;
; The consolidation demo's and the scheduler tests' workload (`trapvisor run hog hog hog
; --shares 1000,2000,4000 --stats`): after entering 32-bit protected mode it prints one line,
; then computes with no exit, no timer and no interrupt, and prints the checksum it reached.
; Each round is the 11 instructions of Marsaglia's xorshift32 (13, 17, 5) and the loop's DEC/JNZ,
; so the guest retires ~44 million instructions: 44 ms of virtual time on the 1000 MHz CPU.
; Exit status 0 if the checksum is the one xorshift32 gives from seed 1 after ROUNDS rounds.

bits 16
org 0x7c00

KERNEL_CS   equ 0x08
KERNEL_DS   equ 0x10
IDT_BASE    equ 0x1000
STACK_TOP   equ 0x90000
ROUNDS      equ 4000000
EXPECTED    equ 0x5f36a1e1      ; xorshift32(13, 17, 5) from 1, after ROUNDS rounds

start:
    cli
    xor ax, ax
    mov ds, ax
    lgdt [gdt_descriptor]
    mov eax, cr0
    or eax, 1
    mov cr0, eax
    jmp dword KERNEL_CS:protected_mode

bits 32
protected_mode:
    mov ax, KERNEL_DS
    mov ds, ax
    mov es, ax
    mov fs, ax
    mov gs, ax
    mov ss, ax
    mov esp, STACK_TOP
    call serial_init
    call idt_init
    mov esi, msg_start
    call puts

    mov eax, 1
    mov ecx, ROUNDS
.round:
    mov edx, eax
    shl edx, 13
    xor eax, edx
    mov edx, eax
    shr edx, 17
    xor eax, edx
    mov edx, eax
    shl edx, 5
    xor eax, edx
    dec ecx
    jnz .round

    mov esi, msg_sum
    call puts
    mov ecx, 8
    call put_hex
    cmp eax, EXPECTED
    call check
    call finish

%include "lib.inc"

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

msg_start:  db "hog: 4000000 rounds of xorshift32", 10, 0
msg_sum:    db "checksum ", 0
