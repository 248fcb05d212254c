; sensitive: reports what guest kernel mode sees from each of x86's sensitive instructions
;
; The fidelity guest. From guest kernel mode (32-bit protected mode, ring 0 as the guest sees it)
; it executes each instruction on Robin & Irvine's list of sensitive but unprivileged x86
; instructions (USENIX Security 2000) and prints what it observes, one line per observation. Every
; line starts with a stable tag followed by ": ", so tests can compare two runs line by line:
;   - SGDT, SIDT, SLDT, STR, SMSW (and MOV EAX,CR0, which is privileged, for contrast),
;   - PUSHF after CLI and STI; POPF changing IF and IOPL, read back with PUSHF and, for contrast,
;     as the EFLAGS image an INT 0x30 pushes (the CPU's, or under a VMM the virtual one),
;   - CS and SS read with MOV and PUSH (their RPL is the privilege level), DS read back after MOV
;     and POP loads, SS after POP SS, and the accessed bit a MOV ES sets in a fresh descriptor,
;   - LAR and LSL on the ring-0 code and data selectors (DPL 0), the ring-3 ones (DPL 3) and the
;     TSS; VERR and VERW on the four code and data selectors: ZF and the access rights or limit,
;   - far JMP, far CALL (with the CS it pushed) and RETF to its own ring-0 code selector, and
;     INT 0x30 (with the CS in its frame), each followed by MOV AX,CS where it arrived; then far
;     JMP and CALL through a pointer in memory (m16:32). A #GP there is caught and printed as
;     "#GP(error code)" (bare hardware raises none: the target is at the caller's own level).
; On bare hardware every CS/SS selector shows RPL 0 and every check at CPL 0 succeeds; under a
; ring-deprivileging VMM some lines differ, and that is the point: this guest does not judge, it
; reports. It sets up an LDT (LLDT) and a TSS (LTR) so that SLDT and STR have something to show.
; The GDT's descriptors (all but 0x38, kept fresh for the accessed-bit line) are marked accessed
; from the start, so LAR's result does not depend on which segment loads set the accessed bit.
; It ends with a summary line and exit status 0 whenever it ran to the end; 3 on an unexpected
; exception.

bits 16
org 0x7c00

KERNEL_CS   equ 0x08
KERNEL_DS   equ 0x10
USER_CS     equ 0x18 | 3
USER_DS     equ 0x20 | 3
TSS_SEL     equ 0x28
LDT_SEL     equ 0x30
FRESH_DS    equ 0x38            ; a ring-0 data descriptor not yet marked accessed
IDT_BASE    equ 0x1000
STACK_TOP   equ 0x90000
FLAG_IF     equ 0x200
IOPL_MASK   equ 0x3000
INT_VECTOR  equ 0x30

start:
    cli
    xor ax, ax
    mov ds, ax
    lgdt [gdt_descriptor]
    mov eax, cr0
    or eax, 1
    mov cr0, eax
    jmp dword KERNEL_CS:protected_mode

bits 32
protected_mode:
    mov ax, KERNEL_DS
    mov ds, ax
    mov es, ax
    mov fs, ax
    mov gs, ax
    mov ss, ax
    mov esp, STACK_TOP
    cld
    call serial_init
    call idt_init
    mov eax, INT_VECTOR
    mov ebx, int_handler
    mov cl, 0x8e                ; interrupt gate, DPL 0
    call set_gate
    mov eax, 13
    mov ebx, general_protection
    call set_gate

    ; --- the TSS and LDT descriptors (their bases are only known here), LTR and LLDT ----------
    mov eax, tss
    mov edi, gdt + TSS_SEL
    call set_base
    mov eax, ldt
    mov edi, gdt + LDT_SEL
    call set_base
    mov dword [tss + 4], STACK_TOP      ; ESP0 (not used: nothing here changes privilege)
    mov dword [tss + 8], KERNEL_DS      ; SS0
    mov ax, TSS_SEL
    ltr ax
    mov ax, LDT_SEL
    lldt ax

    mov esi, msg_title
    call puts

    ; ===== descriptor-table and machine-status registers =====================================
    mov esi, tag_sgdt
    call tag
    sgdt [table_image]
    call put_table_image

    mov esi, tag_sidt
    call tag
    sidt [table_image]
    call put_table_image

    mov esi, tag_sldt
    call tag
    xor eax, eax
    sldt ax
    call put_selector
    call newline

    mov esi, tag_str
    call tag
    xor eax, eax
    str ax
    call put_selector
    call newline

    mov esi, tag_smsw
    call tag
    smsw eax
    mov ecx, 8
    call put_hex
    call newline

    mov esi, tag_mov_cr0
    call tag
    mov eax, cr0
    mov ecx, 8
    call put_hex
    call newline

    ; ===== the interrupt flag and IOPL: PUSHF, POPF, and the INT frame ========================
    mov esi, tag_pushf_cli
    call tag
    cli
    pushfd
    pop eax
    call put_if
    call newline

    mov esi, tag_pushf_sti
    call tag
    sti
    pushfd
    pop eax
    call put_if
    call newline

    mov esi, tag_popf_if0       ; IF = 1 here (STI above)
    call tag
    pushfd
    pop eax
    and eax, ~FLAG_IF
    push eax
    popfd
    pushfd
    pop eax
    call put_if
    call newline
    cli

    mov esi, tag_popf_iopl
    call tag
    pushfd
    pop eax
    or eax, IOPL_MASK
    push eax
    popfd
    pushfd
    pop eax
    call put_iopl
    call newline
    call iopl_zero

    mov esi, tag_int_cli        ; what the CPU (or the VMM) believes: the flags an INT pushes
    call tag
    cli
    int INT_VECTOR
    mov eax, [frame_flags]
    call put_if
    call newline

    mov esi, tag_int_sti
    call tag
    sti
    int INT_VECTOR
    cli
    mov eax, [frame_flags]
    call put_if
    call newline

    mov esi, tag_int_popf_if1   ; IF = 0 here (CLI above)
    call tag
    pushfd
    pop eax
    or eax, FLAG_IF
    push eax
    popfd
    int INT_VECTOR
    cli
    mov eax, [frame_flags]
    call put_if
    call newline

    mov esi, tag_int_popf_iopl
    call tag
    pushfd
    pop eax
    or eax, IOPL_MASK
    push eax
    popfd
    int INT_VECTOR
    call iopl_zero
    mov eax, [frame_flags]
    call put_iopl
    call newline

    ; ===== segment registers: MOV and PUSH of CS/SS, loads of DS and SS ========================
    mov esi, tag_mov_cs
    call tag
    xor eax, eax
    mov ax, cs
    call put_selector_rpl

    mov esi, tag_push_cs
    call tag
    push cs
    pop eax
    and eax, 0xffff
    call put_selector_rpl

    mov esi, tag_mov_ss
    call tag
    xor eax, eax
    mov ax, ss
    call put_selector_rpl

    mov esi, tag_push_ss
    call tag
    push ss
    pop eax
    and eax, 0xffff
    call put_selector_rpl

    mov esi, tag_mov_ds         ; a ring-3 data selector, then the ring-0 one back
    call tag
    mov ax, USER_DS
    mov ds, ax
    xor eax, eax
    mov ax, ds
    mov ecx, 4
    call put_hex
    mov esi, msg_then
    call puts
    mov ax, KERNEL_DS
    mov ds, ax
    xor eax, eax
    mov ax, ds
    call put_hex
    call newline

    mov esi, tag_push_ds
    call tag
    push ds
    pop eax
    and eax, 0xffff
    call put_selector
    call newline

    mov esi, tag_pop_ds
    call tag
    push dword USER_DS
    pop ds
    xor eax, eax
    mov ax, ds
    mov ecx, 4
    call put_hex
    mov esi, msg_then
    call puts
    push dword KERNEL_DS
    pop ds
    xor eax, eax
    mov ax, ds
    call put_hex
    call newline

    mov esi, tag_pop_ss
    call tag
    push dword KERNEL_DS
    pop ss
    xor eax, eax
    mov ax, ss
    call put_selector_rpl

    mov esi, tag_accessed       ; a segment load marks the descriptor accessed
    call tag
    movzx eax, byte [gdt + FRESH_DS + 5]
    mov ecx, 2
    call put_hex
    mov esi, msg_then
    call puts
    mov ax, FRESH_DS
    mov es, ax
    movzx eax, byte [gdt + FRESH_DS + 5]
    call put_hex
    mov ax, KERNEL_DS
    mov es, ax
    call newline

    ; ===== LAR, LSL, VERR, VERW on its own selectors ==========================================
    xor ebx, ebx
.lar_lsl:
    movzx edx, word [selectors + ebx * 2]
    mov esi, tag_lar
    call selector_tag
    mov eax, 0xffffffff
    lar eax, dx
    mov esi, msg_access
    call put_zf_value
    mov esi, tag_lsl
    call selector_tag
    mov eax, 0xffffffff
    lsl eax, dx
    mov esi, msg_limit
    call put_zf_value
    inc ebx
    cmp ebx, SELECTORS
    jb .lar_lsl

    xor ebx, ebx
.verr_verw:
    movzx edx, word [selectors + ebx * 2]
    mov esi, tag_verr
    call selector_tag
    verr dx
    call put_zf
    call newline
    mov esi, tag_verw
    call selector_tag
    verw dx
    call put_zf
    call newline
    inc ebx
    cmp ebx, SEGMENT_SELECTORS
    jb .verr_verw

    ; ===== far transfers to its own ring-0 code selector, and INT n ============================
    mov esi, tag_jmp_far
    call tag
    jmp dword KERNEL_CS:.jmp_arrived
.jmp_arrived:
    xor eax, eax
    mov ax, cs
    push eax
    mov esi, msg_arrived
    call puts
    call newline
    mov esi, tag_cs_after_jmp
    call tag
    pop eax
    call put_selector_rpl

    mov esi, tag_call_far
    call tag
    call dword KERNEL_CS:far_callee
    mov esi, msg_returned       ; the callee's RETF came back here
    call puts
    mov eax, [callee_pushed_cs]
    call put_selector
    call newline
    mov esi, tag_cs_after_call
    call tag
    mov eax, [callee_cs]
    call put_selector_rpl

    mov esi, tag_retf
    call tag
    push dword KERNEL_CS
    push dword .retf_arrived
    retf
.retf_arrived:
    xor eax, eax
    mov ax, cs
    push eax
    mov esi, msg_arrived
    call puts
    call newline
    mov esi, tag_cs_after_retf
    call tag
    pop eax
    call put_selector_rpl

    mov esi, tag_jmp_far_mem    ; the same transfers through a pointer in memory (m16:32)
    call tag
    mov dword [recover], jmp_mem_faulted
    jmp far [jmp_pointer]
jmp_mem_arrived:
    mov dword [recover], 0
    mov esi, msg_arrived
    call puts
    call newline
    jmp jmp_mem_done
jmp_mem_faulted:
    call put_gp
jmp_mem_done:

    mov esi, tag_call_far_mem
    call tag
    mov dword [callee_pushed_cs], 0xffffffff
    mov dword [recover], call_mem_faulted
    call far [call_pointer]
    mov dword [recover], 0
    mov esi, msg_returned
    call puts
    mov eax, [callee_pushed_cs]
    call put_selector
    call newline
    jmp call_mem_done
call_mem_faulted:
    call put_gp
call_mem_done:

    mov esi, tag_int
    call tag
    mov dword [frame_cs], 0xffffffff
    int INT_VECTOR
    mov esi, msg_int_returned
    call puts
    mov eax, [frame_cs]
    call put_selector
    call newline
    mov esi, tag_cs_in_handler
    call tag
    mov eax, [handler_cs]
    call put_selector_rpl

    ; ===== summary ===========================================================================
    mov esi, tag_summary
    call puts
    mov esi, msg_colon
    call puts
    mov eax, [observations]
    call put_dec
    mov esi, msg_observations
    call puts
    xor al, al
    jmp exit

; ----- the far-call target and the INT 0x30 handler -------------------------------------------
far_callee:                     ; stack: EIP, CS (the far CALL pushed both)
    mov eax, [esp + 4]
    and eax, 0xffff
    mov [callee_pushed_cs], eax
    xor eax, eax
    mov ax, cs
    mov [callee_cs], eax
    retf

int_handler:                    ; interrupt gate: EIP, CS, EFLAGS on the stack
    push eax
    mov eax, [esp + 8]
    and eax, 0xffff
    mov [frame_cs], eax
    mov eax, [esp + 12]
    mov [frame_flags], eax
    xor eax, eax
    mov ax, cs
    mov [handler_cs], eax
    pop eax
    iretd

; A #GP where the guest expects one may be raised ([recover] holds where to resume): record the
; error code and resume there. Anywhere else it is reported as unexpected (lib.inc, status 3).
general_protection:             ; stack: error code, EIP, CS, EFLAGS
    cmp dword [recover], 0
    je exc13
    push eax
    mov eax, [esp + 4]
    mov [gp_error], eax
    mov eax, [recover]
    mov [esp + 8], eax          ; the frame's EIP
    mov dword [recover], 0
    pop eax
    add esp, 4                  ; the error code
    iretd

; ----- helpers --------------------------------------------------------------------------------
tag:                            ; ESI = a tag: print it and ": ", count one observation
    call puts
    push esi
    mov esi, msg_colon
    call puts
    pop esi
    call count
    ret

selector_tag:                   ; ESI = "LAR " etc., EDX = selector: "LAR 0x0008: "
    call puts
    push eax
    push ecx
    mov eax, edx
    mov ecx, 4
    call put_hex
    pop ecx
    pop eax
    push esi
    mov esi, msg_colon
    call puts
    pop esi
    call count
    ret

count:                          ; one more observation (a restartable store: see nano.inc)
    push eax
    mov eax, [observations]
    inc eax
    mov [observations], eax
    pop eax
    ret

newline:
    push eax
    mov al, 10
    call putc
    pop eax
    ret

put_selector:                   ; EAX = selector: "0x0008"
    push ecx
    mov ecx, 4
    call put_hex
    pop ecx
    ret

put_selector_rpl:               ; EAX = selector: "0x0008 RPL=0", newline
    call put_selector
    push esi
    mov esi, msg_rpl
    call puts
    pop esi
    push eax
    and eax, 3
    call put_dec
    pop eax
    jmp newline

put_if:                         ; EAX = EFLAGS: "IF=0" or "IF=1"
    push eax
    push esi
    mov esi, msg_if
    call puts
    shr eax, 9
    and eax, 1
    call put_dec
    pop esi
    pop eax
    ret

put_iopl:                       ; EAX = EFLAGS: "IOPL=n"
    push eax
    push esi
    mov esi, msg_iopl
    call puts
    shr eax, 12
    and eax, 3
    call put_dec
    pop esi
    pop eax
    ret

put_zf:                         ; ZF of the caller: "ZF=0" or "ZF=1" (preserves EFLAGS)
    pushfd
    push eax
    push esi
    mov esi, msg_zf0
    jnz .print
    mov esi, msg_zf1
.print:
    call puts
    pop esi
    pop eax
    popfd
    ret

put_zf_value:                   ; ZF and EAX of LAR/LSL, ESI = the value's label:
    call put_zf                 ; "ZF=1 AR=0x00cf9b00", or "ZF=0" alone (EAX is not written)
    jnz .done
    push ecx
    call puts
    mov ecx, 8
    call put_hex
    pop ecx
.done:
    jmp newline

iopl_zero:                      ; EFLAGS.IOPL = 0 again (POPF at CPL 0)
    push eax
    pushfd
    pop eax
    and eax, ~IOPL_MASK
    push eax
    popfd
    pop eax
    ret

put_table_image:                ; the 6 bytes SGDT/SIDT stored: "base=0x... limit=0x...", newline
    push esi
    mov esi, msg_base
    call puts
    mov eax, [table_image + 2]
    mov ecx, 8
    call put_hex
    mov esi, msg_limit
    call puts
    movzx eax, word [table_image]
    mov ecx, 4
    call put_hex
    pop esi
    jmp newline

put_gp:                         ; "#GP(0x0008)" from the recorded error code, newline
    push esi
    mov esi, msg_gp
    call puts
    mov eax, [gp_error]
    mov ecx, 4
    call put_hex
    mov al, ')'
    call putc
    pop esi
    jmp newline

set_base:                       ; EAX = base -> the descriptor at EDI
    mov [edi + 2], ax           ; base 15..0
    shr eax, 16
    mov [edi + 4], al           ; base 23..16
    mov [edi + 7], ah           ; base 31..24
    ret

%include "lib.inc"

; ----- data -----------------------------------------------------------------------------------
observations:       dd 0
frame_cs:           dd 0
frame_flags:        dd 0
handler_cs:         dd 0
callee_cs:          dd 0
callee_pushed_cs:   dd 0
recover:            dd 0
gp_error:           dd 0
jmp_pointer:        dd jmp_mem_arrived
                    dw KERNEL_CS
call_pointer:       dd far_callee
                    dw KERNEL_CS
table_image:        dw 0
                    dd 0

SELECTORS           equ 5       ; LAR and LSL: all five; VERR and VERW: the four segments
SEGMENT_SELECTORS   equ 4
selectors:          dw KERNEL_CS, KERNEL_DS, USER_CS, USER_DS, TSS_SEL

align 8
gdt:
    dq 0                        ; 0x00: null
    dw 0xffff, 0x0000           ; 0x08: ring-0 code, flat, accessed (access byte 0x9b)
    db 0x00, 0x9b, 0xcf, 0x00
    dw 0xffff, 0x0000           ; 0x10: ring-0 data, flat, accessed (0x93)
    db 0x00, 0x93, 0xcf, 0x00
    dw 0xffff, 0x0000           ; 0x18: ring-3 code, flat, accessed (0xfb)
    db 0x00, 0xfb, 0xcf, 0x00
    dw 0xffff, 0x0000           ; 0x20: ring-3 data, flat, accessed (0xf3)
    db 0x00, 0xf3, 0xcf, 0x00
    dw 103, 0x0000              ; 0x28: 32-bit TSS, limit 103, base filled in at run time
    db 0x00, 0x89, 0x00, 0x00
    dw 7, 0x0000                ; 0x30: LDT with one entry, base filled in at run time
    db 0x00, 0x82, 0x00, 0x00
    dw 0xffff, 0x0000           ; 0x38: ring-0 data, flat, not yet accessed (0x92)
    db 0x00, 0x92, 0xcf, 0x00
gdt_end:

gdt_descriptor:
    dw gdt_end - gdt - 1
    dd gdt

align 8
ldt:
    dw 0xffff, 0x0000           ; LDT entry 0 (selector 0x04): flat data, DPL 0
    db 0x00, 0x93, 0xcf, 0x00

align 4
tss:
    times 25 dd 0
    dw 0                        ; T flag
    dw 104                      ; I/O map base at the limit: no map

msg_title:        db "sensitive: what guest kernel mode sees from the sensitive instructions", 10, 0
msg_colon:        db ": ", 0
msg_base:         db "base=", 0
msg_limit:        db " limit=", 0
msg_access:       db " AR=", 0
msg_rpl:          db " RPL=", 0
msg_if:           db "IF=", 0
msg_iopl:         db "IOPL=", 0
msg_zf0:          db "ZF=0", 0
msg_zf1:          db "ZF=1", 0
msg_then:         db " then ", 0
msg_gp:           db "#GP(", 0
msg_arrived:      db "arrived", 0
msg_returned:     db "arrived and returned, CS pushed=", 0
msg_int_returned: db "arrived and returned, CS in frame=", 0
msg_observations: db " observations", 10, 0

tag_sgdt:          db "SGDT", 0
tag_sidt:          db "SIDT", 0
tag_sldt:          db "SLDT", 0
tag_str:           db "STR", 0
tag_smsw:          db "SMSW EAX", 0
tag_mov_cr0:       db "MOV EAX,CR0", 0
tag_pushf_cli:     db "PUSHF after CLI", 0
tag_pushf_sti:     db "PUSHF after STI", 0
tag_popf_if0:      db "POPF IF=0 -> PUSHF", 0
tag_popf_iopl:     db "POPF IOPL=3 -> PUSHF", 0
tag_int_cli:       db "CLI -> INT frame", 0
tag_int_sti:       db "STI -> INT frame", 0
tag_int_popf_if1:  db "POPF IF=1 after CLI -> INT frame", 0
tag_int_popf_iopl: db "POPF IOPL=3 -> INT frame", 0
tag_mov_cs:        db "MOV AX,CS", 0
tag_push_cs:       db "PUSH CS", 0
tag_mov_ss:        db "MOV AX,SS", 0
tag_push_ss:       db "PUSH SS", 0
tag_mov_ds:        db "MOV DS,AX -> MOV AX,DS", 0
tag_push_ds:       db "PUSH DS", 0
tag_pop_ds:        db "POP DS -> MOV AX,DS", 0
tag_pop_ss:        db "POP SS -> MOV AX,SS", 0
tag_accessed:      db "MOV ES,AX 0x0038 -> descriptor access byte", 0
tag_lar:           db "LAR ", 0
tag_lsl:           db "LSL ", 0
tag_verr:          db "VERR ", 0
tag_verw:          db "VERW ", 0
tag_jmp_far:       db "JMP FAR 0x0008", 0
tag_cs_after_jmp:  db "MOV AX,CS after JMP FAR", 0
tag_call_far:      db "CALL FAR 0x0008", 0
tag_cs_after_call: db "MOV AX,CS in CALL FAR target", 0
tag_retf:          db "RETF to 0x0008", 0
tag_cs_after_retf: db "MOV AX,CS after RETF", 0
tag_jmp_far_mem:   db "JMP FAR [m16:32] 0x0008", 0
tag_call_far_mem:  db "CALL FAR [m16:32] 0x0008", 0
tag_int:           db "INT 0x30", 0
tag_cs_in_handler: db "MOV AX,CS in INT 0x30 handler", 0
tag_summary:       db "summary", 0
