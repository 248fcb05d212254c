; forever: spins in `jmp $` with interrupts off, so only --timeout or --max-exits can end it
;
; Real mode: CLI, then a one-instruction loop that never exits to the VMM under any engine.

bits 16
org 0x7c00

start:
    cli
    jmp $
