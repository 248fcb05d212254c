; fuzz reproducer for the known divergence hypervisor-cpuid-leaves (seed 1026, minimised)
; known: bt hypervisor-cpuid-leaves
; known: trap hypervisor-cpuid-leaves
; known: vtx hypervisor-cpuid-leaves
%include "../../fuzz/runtime.asm"
times BODY - 0x7c00 - ($ - $$) db 0
op_0:
    mov dword [ss:CURRENT_OP], 0
    mov dword [ss:RECOVERY], op_0_end
    mov [ss:RECOVERY_ESP], esp
    ; op: cpuid
    mov eax, 0x40000000
    xor ecx, ecx
    cpuid
op_0_end:
    call checkpoint
    jmp finish
