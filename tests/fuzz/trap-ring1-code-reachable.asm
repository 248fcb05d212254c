; fuzz reproducer for the known divergence trap-ring1-code-reachable (seed 5038, minimised)
; known: trap trap-ring1-code-reachable
%include "../../fuzz/runtime.asm"
times BODY - 0x7c00 - ($ - $$) db 0
op_0:
    mov dword [ss:CURRENT_OP], 0
    mov dword [ss:RECOVERY], op_0_end
    mov [ss:RECOVERY_ESP], esp
    ; op: far_transfer
    jmp 0x68:.t
    nop
.t:
op_0_end:
    call checkpoint
    jmp finish
