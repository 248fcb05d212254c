; spin: a CPU-bound guest that never ends: xorshift32 rounds forever, no I/O, no interrupts
;
; The scheduler benchmark's VM (benchmarks/scheduling.py): it wants the CPU all the time, so
; the share it receives is exactly what the scheduler grants it. Real mode; 11 instructions a round.

bits 16
org 0x7c00

start:
    cli
    mov eax, 1
round:
    mov edx, eax
    shl edx, 13
    xor eax, edx
    mov edx, eax
    shr edx, 17
    xor eax, edx
    mov edx, eax
    shl edx, 5
    xor eax, edx
    inc ecx
    jmp round
