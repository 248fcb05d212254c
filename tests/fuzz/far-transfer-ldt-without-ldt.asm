; fuzz reproducer of the divergence far-transfer-ldt-without-ldt (seed 1000, minimised)
; fixed by the engine fixes merged in 9621309; now a regression test: every engine must agree
; with native
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
