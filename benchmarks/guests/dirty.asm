; dirty: a guest that writes memory at a steady rate: one store into the next page of an 8 MiB
; window (2048 pages from 2 MiB, in turn) every 2 * ITERATIONS + 7 instructions, WRITES times;
; then it prints its line's end and exits with status 0.
;
; The vms benchmark's migration workload (benchmarks/vms_moves.py): at 1 ns per instruction of
; virtual time it dirties 1e6 / (2 * ITERATIONS + 7) pages per ms, so pre-copy's rounds of
; 200,000 instructions each find about 200000 / (2 * ITERATIONS + 7) pages written. Each store
; writes the countdown, so a page's content changes every time it is written. 32-bit protected
; mode, no paging, no interrupts: no exit between the first line and the last.

bits 16
org 0x7c00

KERNEL_CS   equ 0x08
KERNEL_DS   equ 0x10
IDT_BASE    equ 0x1000
STACK_TOP   equ 0x90000
ITERATIONS  equ 1000            ; spin rounds between two page writes (harness.build sets it)
WRITES      equ 4096
WINDOW      equ 0x200000
PAGES       equ 2048            ; a power of two: the page index wraps with AND

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

    xor ebx, ebx                ; the page index
    mov edi, WRITES
.write:
    mov eax, ebx
    shl eax, 12
    mov [WINDOW + eax], edi
    inc ebx
    and ebx, PAGES - 1
    mov ecx, ITERATIONS
.spin:
    dec ecx
    jnz .spin
    dec edi
    jnz .write

    test edi, edi               ; ZF = 1: every write was made
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

msg_start: db "dirty: writing pages at a steady rate", 0
