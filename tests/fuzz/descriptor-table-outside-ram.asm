; fuzz reproducer for the known divergence descriptor-table-outside-ram (seed 1002, minimised)
; known: bt descriptor-table-outside-ram
; known: native descriptor-table-outside-ram
; known: trap descriptor-table-outside-ram
; known: vtx descriptor-table-outside-ram
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
