; fuzz reproducer for the known divergence trap-iret-guest-rpl1 (seed 7000019, written by hand
; from its one op): IRETD to selector 0x09 (DPL-0 code, RPL 1) pushed by the guest at CPL 0
; known: trap trap-iret-guest-rpl1
%include "../../fuzz/runtime.asm"
times BODY - 0x7c00 - ($ - $$) db 0
op_0:
    mov dword [ss:CURRENT_OP], 0
    mov dword [ss:RECOVERY], op_0_end
    mov [ss:RECOVERY_ESP], esp
    ; op: far_transfer
    push dword 0x2
    push dword 0x9
    push dword .t
    iretd
.t:
op_0_end:
    call checkpoint
    jmp finish
