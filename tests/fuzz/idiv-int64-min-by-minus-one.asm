; fuzz reproducer (seed 7000212, written by hand from its op): IDIV ECX with EDX:EAX =
; 0x80000000_00000000 and ECX = -1 killed every worker with SIGFPE (Unicorn's helper divided
; INT64_MIN by -1 on the host); fixed by emu/divide_guard.py: the guest gets #DE, as natively
%include "../../fuzz/runtime.asm"
times BODY - 0x7c00 - ($ - $$) db 0
op_0:
    mov dword [ss:CURRENT_OP], 0
    mov dword [ss:RECOVERY], op_0_end
    mov [ss:RECOVERY_ESP], esp
    ; op: division
    mov eax, 0x0
    mov edx, 0x80000000
    mov ecx, 0xffffffff
    idiv ecx
op_0_end:
    call checkpoint
    jmp finish
