; fuzz reproducer of the divergence bt-outer-return-null-selector (seed 9148, minimised)
; fixed by the engine fixes merged in 9621309; now a regression test: every engine must agree
; with native
%include "../../fuzz/runtime.asm"
times BODY - 0x7c00 - ($ - $$) db 0
op_0:
    mov dword [ss:CURRENT_OP], 0
    mov dword [ss:RECOVERY], op_0_end
    mov [ss:RECOVERY_ESP], esp
    ; op: segment_load
    push dword 0x3
    pop ds
op_0_end:
    call checkpoint
op_1:
    mov dword [ss:CURRENT_OP], 1
    mov dword [ss:RECOVERY], op_1_end
    mov [ss:RECOVERY_ESP], esp
    ; op: user_mode
    push dword 0x23
    push dword 0x80000
    push dword 0x202
    push dword 0x1b
    push dword .user
    iretd
.user:
    add eax, 0x7fffffff
    into
    mov dx, 0x3ff
    mov eax, 0x17
    out dx, ax
    ud2
op_1_end:
    call checkpoint
    jmp finish
