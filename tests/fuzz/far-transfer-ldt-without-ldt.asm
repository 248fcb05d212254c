; fuzz reproducer for the known divergence far-transfer-ldt-without-ldt (seed 1000, minimised)
; known: bt far-transfer-ldt-without-ldt
; known: trap far-transfer-ldt-without-ldt
%include "../../fuzz/runtime.asm"
times BODY - 0x7c00 - ($ - $$) db 0
op_0:
    mov dword [ss:CURRENT_OP], 0
    mov dword [ss:RECOVERY], op_0_end
    mov [ss:RECOVERY_ESP], esp
    ; op: far_transfer
    jmp 0xc:.t
    nop
.t:
op_0_end:
    call checkpoint
    jmp finish
