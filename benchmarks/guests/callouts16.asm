; callouts16: PUSHF/POPF in real mode for `trapvisor bench` (benchmarks/bt_callouts.py): trap and
; bt run it in virtual-8086 mode at IOPL 0, where both instructions fault (#GP -> emulate), so
; this is trap's exit for the instruction pair that bt translates in protected-mode kernel code.
;   0  empty      dec ecx / jnz only
;   3  pushf/popf pushf, popf
; benchmarks/bt_callouts.py patches the dwords after "BNCH".

bits 16
org 0x7c00

DEBUG_EXIT  equ 0xf4

start:
    jmp main

align 4
params:
    db "BNCH"
iterations: dd 100000
variant:    dd 3
entry32:    dd 0                ; no 32-bit entry in this guest

main:
    xor ax, ax
    mov ds, ax
    mov ss, ax
    mov sp, 0x7000
    mov ecx, [iterations]
    mov eax, [variant]
    cmp eax, 3
    je pushf_loop

empty_loop:
    dec ecx
    jnz empty_loop
    jmp done

pushf_loop:
    pushf
    popf
    dec ecx
    jnz pushf_loop

done:
    xor al, al
    out DEBUG_EXIT, al
    hlt
