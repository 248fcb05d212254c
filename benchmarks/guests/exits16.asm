; exits16: real-mode exit-cost loops for the trap paths of `trapvisor bench` (benchmarks/traps.py)
;
; One loop of `iterations` passes, chosen by `variant`:
;   0  empty      dec ecx / jnz only: the loop overhead the other variants are measured against
;   1  out        out 0x80, al      (POST port: the platform's null device) -> IO_INSTRUCTION exit
;   2  cli        cli               (virtual-8086 under the trap engine: IOPL 0 -> #GP -> emulate)
; The loop bodies differ only by the measured instruction. benchmarks/traps.py patches the dwords
; after the "BNCH" magic; the defaults below let the guest run on its own too. Ends with status 0
; through the debug-exit port; the HLT after it stops a bare machine that has no such port.

bits 16
org 0x7c00

DEBUG_EXIT  equ 0xf4
POST_PORT   equ 0x80

start:
    jmp main

align 4
params:
    db "BNCH"
iterations: dd 100000
variant:    dd 1
entry32:    dd 0                ; no 32-bit entry in this guest

main:
    xor ax, ax
    mov ds, ax
    mov ecx, [iterations]
    mov eax, [variant]
    cmp eax, 1
    je out_loop
    cmp eax, 2
    je cli_loop

empty_loop:
    dec ecx
    jnz empty_loop
    jmp done

out_loop:
    out POST_PORT, al
    dec ecx
    jnz out_loop
    jmp done

cli_loop:
    cli
    dec ecx
    jnz cli_loop

done:
    xor al, al
    out DEBUG_EXIT, al
    hlt
