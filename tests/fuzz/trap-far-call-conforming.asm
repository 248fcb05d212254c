; fuzz reproducer for the divergence trap-far-call-conforming (seed 5030, minimised), fixed:
; trap reads the CS a far CALL pushed at real ring 1 as the guest's (TrapView.returned_selector)
; (its second op, a far transfer through the call gate 0x58, went: it only showed bt's
; far-transfer-system-descriptor, fixed in 9621309)
%include "../../fuzz/runtime.asm"
times BODY - 0x7c00 - ($ - $$) db 0
op_0:
    mov dword [ss:CURRENT_OP], 0
    mov dword [ss:RECOVERY], op_0_end
    mov [ss:RECOVERY_ESP], esp
    ; op: far_transfer
    call 0x40:.t
    jmp .done
.t:
    retf
.done:
op_0_end:
    call checkpoint
    jmp finish
