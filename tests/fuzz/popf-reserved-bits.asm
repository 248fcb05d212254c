; fuzz reproducer for the known divergence popf-reserved-bits (seed 1005, minimised)
; known: bt popf-reserved-bits
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
