; fuzz reproducer for the known divergence trap-user-frame-flags (seed 5009, minimised)
; (its second op, a far transfer through the call gate 0x58, went: it only showed bt's
; far-transfer-system-descriptor, fixed in 9621309)
; known: trap trap-user-frame-flags
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
    mov ax, 0x60
    lsl ebx, ax
    mov ax, 0x20
    verw ax
    setz bl
    ud2
op_0_end:
    call checkpoint
    jmp finish
