; fuzz reproducer (seed 8000023, minimised): WRMSR IA32_EFER with reserved bits, then paging on
; QEMU kept the writable bits (LME among them) where the CPU raises #GP(0); bt and trap then set
; CR0.PG with LME=1 and PAE=0 where native's QEMU silently refused it. Fixed in emu/cpu.py's
; msr_write (the #GP); a regression test: every engine must agree with native
%include "../../fuzz/runtime.asm"
times BODY - 0x7c00 - ($ - $$) db 0
op_0:
    mov dword [ss:CURRENT_OP], 0
    mov dword [ss:RECOVERY], op_0_end
    mov [ss:RECOVERY_ESP], esp
    ; op: msr
    mov ecx, 0xc0000080
    mov eax, 0x7fffffff
    xor edx, edx
    wrmsr
    rdmsr
op_0_end:
    call checkpoint
op_1:
    mov dword [ss:CURRENT_OP], 1
    mov dword [ss:RECOVERY], op_1_end
    mov [ss:RECOVERY_ESP], esp
    ; op: control_register
    mov eax, 0x4000
    mov cr3, eax
    mov eax, cr0
    or eax, 0x80000000
    mov cr0, eax
op_1_end:
    call checkpoint
    jmp finish
