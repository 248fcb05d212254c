; fuzz reproducer of the divergence bt-smsw-r32 (seed 9083, minimised)
; fixed by the engine fixes merged in 9621309; now a regression test: every engine must agree
; with native
%include "../../fuzz/runtime.asm"
times BODY - 0x7c00 - ($ - $$) db 0
op_0:
    mov dword [ss:CURRENT_OP], 0
    mov dword [ss:RECOVERY], op_0_end
    mov [ss:RECOVERY_ESP], esp
    ; op: descriptor_table
    smsw eax
op_0_end:
    call checkpoint
op_1:
    mov dword [ss:CURRENT_OP], 1
    mov dword [ss:RECOVERY], op_1_end
    mov [ss:RECOVERY_ESP], esp
    ; op: far_transfer
    push dword 0x202
    push dword 0x58
    push dword .t
    iretd
.t:
op_1_end:
    call checkpoint
    jmp finish
