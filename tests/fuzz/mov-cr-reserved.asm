; fuzz reproducer for the known divergence mov-cr-reserved (seed 1010, minimised)
; known: bt mov-cr-reserved
; known: trap mov-cr-reserved
%include "../../fuzz/runtime.asm"
times BODY - 0x7c00 - ($ - $$) db 0
op_0:
    mov dword [ss:CURRENT_OP], 0
    mov dword [ss:RECOVERY], op_0_end
    mov [ss:RECOVERY_ESP], esp
    ; op: control_register
    db 0x0f, 0x20, 0xe8 ; mov eax, cr5
op_0_end:
    call checkpoint
    jmp finish
