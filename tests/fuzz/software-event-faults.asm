; INT n, INT3 and INTO whose delivery faults: a not-present gate (#NP) at ring 0, DPL-0 gates
; from ring 3 (#GP). The fault is reported at the instruction (SDM Vol. 3 6.12.1.1); every
; engine pushed the address past it, as they deliver software events with EIP already moved
; (the same in all, so no divergence showed). Fixed in emu/events.py (EventDelivery
; ._back_to_instruction); tests/e2e/test_fuzz.py checks the pushed EIP under every engine
%include "../../fuzz/runtime.asm"
times BODY - 0x7c00 - ($ - $$) db 0
op_0:
    mov dword [ss:CURRENT_OP], 0
    mov dword [ss:RECOVERY], op_0_end
    mov [ss:RECOVERY_ESP], esp
    ; op: software_interrupt
    int 0x44
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
    int 0x30
    ud2
op_1_end:
    call checkpoint
op_2:
    mov dword [ss:CURRENT_OP], 2
    mov dword [ss:RECOVERY], op_2_end
    mov [ss:RECOVERY_ESP], esp
    ; op: user_mode
    push dword 0x23
    push dword 0x80000
    push dword 0x1b
    push dword .user
    retf
.user:
    int3
    ud2
op_2_end:
    call checkpoint
op_3:
    mov dword [ss:CURRENT_OP], 3
    mov dword [ss:RECOVERY], op_3_end
    mov [ss:RECOVERY_ESP], esp
    ; op: user_mode
    push dword 0x23
    push dword 0x80000
    push dword 0x1b
    push dword .user
    retf
.user:
    mov eax, 0x7fffffff
    add eax, eax
    into
    ud2
op_3_end:
    call checkpoint
    jmp finish
