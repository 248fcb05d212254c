; fuzz reproducer for the known divergence trap-user-pushf (seed 9105, minimised)
; known: trap trap-user-pushf
%include "../../fuzz/runtime.asm"
times BODY - 0x7c00 - ($ - $$) db 0
op_0:
    mov dword [ss:CURRENT_OP], 0
    mov dword [ss:RECOVERY], op_0_end
    mov [ss:RECOVERY_ESP], esp
    ; op: user_mode
    push dword 0x23
    push dword 0x80000
    push dword 0x1b
    push dword .user
    retf
.user:
    pushfd
    pop ebx
    mov eax, 0xffffffff
    mov cr2, eax
    mov ebx, cr2
    ud2
op_0_end:
    call checkpoint
    jmp finish
