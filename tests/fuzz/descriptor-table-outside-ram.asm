; fuzz reproducer of the divergence descriptor-table-outside-ram (seed 1002, minimised)
; fixed by the engine fixes merged in 9621309; now a regression test: every engine must agree
; with native
%include "../../fuzz/runtime.asm"
times BODY - 0x7c00 - ($ - $$) db 0
op_0:
    mov dword [ss:CURRENT_OP], 0
    mov dword [ss:RECOVERY], op_0_end
    mov [ss:RECOVERY_ESP], esp
    ; op: descriptor_table
    mov word [ss:0x3008], 0x7ff
    mov dword [ss:0x300a], 0x10000000
    lidt [ss:0x3008]
    int3
    lidt [idt_descriptor]
op_0_end:
    call checkpoint
    jmp finish
