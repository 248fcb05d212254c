; fuzz reproducer for the known divergence trap-user-iopl3-cli-sti (seed 8002689, minimised)
; (IRETD to ring 3 with IOPL 3, then STI/CLI there: the machine runs them, trap raises #GP(0))
; known: trap trap-user-iopl3-cli-sti
%include "../../fuzz/runtime.asm"
times BODY - 0x7c00 - ($ - $$) db 0
op_0:
    mov dword [ss:CURRENT_OP], 0
    mov dword [ss:RECOVERY], op_0_end
    mov [ss:RECOVERY_ESP], esp
    ; op: user_mode
    push dword 0x23
    push dword 0x80000
    push dword 0x3202
    push dword 0x1b
    push dword .user
    iretd
.user:
    sti
    nop
    cli
    ud2
op_0_end:
    call checkpoint
    jmp finish
