; fuzz reproducer for the known divergence int6-as-invalid-opcode (seed 4385, minimised)
; (bt pushes the address past INT 6, as the SDM says; native, trap and vtx deliver it as #UD)
; known: bt int6-as-invalid-opcode
%include "../../fuzz/runtime.asm"
times BODY - 0x7c00 - ($ - $$) db 0
op_0:
    mov dword [ss:CURRENT_OP], 0
    mov dword [ss:RECOVERY], op_0_end
    mov [ss:RECOVERY_ESP], esp
    ; op: software_interrupt
    int 0x6
op_0_end:
    call checkpoint
    jmp finish
