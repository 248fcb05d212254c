; fuzz reproducer of the divergence mov-cr-reserved (seed 1010, minimised)
; fixed by the engine fixes merged in 9621309; now a regression test: every engine must agree
; with native
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
