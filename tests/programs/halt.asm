; halt: CLI; HLT with no interrupt pending, which nothing can ever wake
;
; Real mode. The run must end with a "halted" report (exit status 3) instead of sleeping forever.

bits 16
org 0x7c00

start:
    cli
    hlt
