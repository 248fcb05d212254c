; fuzz reproducer of the divergence bt-triple-fault-escapes (seed 1006, minimised)
; fixed by the engine fixes merged in 9621309; now a regression test: every engine must agree
; with native
%include "../../fuzz/runtime.asm"
times BODY - 0x7c00 - ($ - $$) db 0
op_0:
    mov dword [ss:CURRENT_OP], 0
    mov dword [ss:RECOVERY], op_0_end
    mov [ss:RECOVERY_ESP], esp
    ; op: descriptor_table
    mov word [ss:0x3000], 0x7f
    mov dword [ss:0x3002], 0x3000
    lgdt [ss:0x3000]
    mov ax, 0x10
    mov ds, ax
    lgdt [gdt_descriptor]
op_0_end:
    call checkpoint
    jmp finish
