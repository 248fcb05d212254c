; fuzz reproducer of the divergence int6-as-invalid-opcode (seed 4385, minimised; op 1 added)
; Unicorn hands INT 6 (CD 06) to its invalid-instruction hook with EIP at the INT, so native,
; trap and vtx delivered it as a #UD fault. Fixed in EngineBase.int6_past: INT 6 is a software
; interrupt (the next instruction's address pushed; from ring 3 through a DPL-0 gate,
; #GP(0x32)). A regression test: every engine must agree with native
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
op_1:
    mov dword [ss:CURRENT_OP], 1
    mov dword [ss:RECOVERY], op_1_end
    mov [ss:RECOVERY_ESP], esp
    ; op: user_mode
    push dword 0x23
    push dword 0x80000
    push dword 0x1b
    push dword .user
    retf
.user:
    int 0x6
    ud2
op_1_end:
    call checkpoint
    jmp finish
