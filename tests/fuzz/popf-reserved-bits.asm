; fuzz reproducer of the divergence popf-reserved-bits (seed 1005, minimised)
; fixed by the engine fixes merged in 9621309; now a regression test: bt and vtx must agree
; with native, and trap too except where its fidelity report excuses it (PUSHF at real ring 1
; pushes the real IF and IOPL)
; trap-fidelity: trap
%include "../../fuzz/runtime.asm"
times BODY - 0x7c00 - ($ - $$) db 0
op_0:
    mov dword [ss:CURRENT_OP], 0
    mov dword [ss:RECOVERY], op_0_end
    mov [ss:RECOVERY_ESP], esp
    ; op: flags
    pushfw
    pop ax
    push word 0xbeff
    popfw
op_0_end:
    call checkpoint
    jmp finish
