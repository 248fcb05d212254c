; divergences: instructions whose result once differed between the bare machine and trap or bt
;
; Each line runs one instruction (or a short sequence) and prints the exception it raised (vector
; and error code, 0xff = none) and a value it produced. The bare machine's output is the
; reference every engine must print byte for byte. Covered: MOV to/from CR1/CR5/CR6/CR7 in real
; and protected mode (#UD); SMSW after MOV CR0 = 1 (ET is hard-wired to 1); SMSW r32 with CR0
; bits above 15 set; far JMP/CALL with RPL > CPL to a DPL-0 code segment; IRET to an LDT selector
; with no LDT; LTR with a null selector; far JMP/CALL/RETF naming system descriptors (an LDT, an
; interrupt gate, a busy TSS, and a call gate, which is taken); POPF of reserved EFLAGS bits;
; MOV CS (#UD); a 16-bit code segment reached with a far JMP after LTR; a far CALL to a
; conforming DPL-0 segment and its RETF (taken: under trap the real CPU makes that call at ring 1
; and pushes CS with RPL 1); a far JMP to DPL-1 code at CPL 0 (#GP; under trap the real ring 1
; passes the check: its fidelity report lists the JMP).

bits 16
org 0x7c00

KERNEL_CS   equ 0x08
KERNEL_DS   equ 0x10
LDT_SEL     equ 0x18
TSS_SEL     equ 0x20
CODE16_SEL  equ 0x28
CALL_GATE   equ 0x30
INT_GATE    equ 0x38
BUSY_TSS    equ 0x40
TSS2_SEL    equ 0x48
CONFORMING  equ 0x50
RING1_CS    equ 0x58
IDT_BASE    equ 0x1000
NONE        equ 0xff

start:
    cli
    xor ax, ax
    mov ds, ax
    mov ss, ax
    mov sp, 0x7c00
    mov word [6 * 4], rm_ud     ; IVT[6] = 0000:rm_ud
    mov word [6 * 4 + 2], 0
    db 0x0f, 0x20, 0xc8         ; MOV EAX, CR1: #UD in real mode
    db 0x0f, 0x22, 0xf0         ; MOV CR6, EAX: #UD too
    lgdt [gdt_descriptor]
    mov eax, 1                  ; CR0 = 1: PE; ET reads back as 1 whatever is written
    mov cr0, eax
    jmp dword KERNEL_CS:protected_mode

rm_ud:                          ; real-mode #UD: count it, step over the 3-byte MOV CRn
    inc byte [rm_uds]
    push bp
    mov bp, sp
    add word [bp + 2], 3
    pop bp
    iret

bits 32
protected_mode:
    mov ax, KERNEL_DS
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov esp, 0x90000
    call serial_init
    call idt_init
    mov eax, 6
    mov ebx, ud_stub
    mov cl, 0x8e
    call set_gate
    mov eax, 10
    mov ebx, ts_stub
    call set_gate
    mov eax, 11
    mov ebx, np_stub
    call set_gate
    mov eax, 12
    mov ebx, ss_stub
    call set_gate
    mov eax, 13
    mov ebx, gp_stub
    call set_gate
    mov esi, msg_title
    call puts

    mov esi, msg_rm_cr          ; real mode: MOV EAX, CR1 and MOV CR6, EAX
    movzx eax, byte [rm_uds]
    mov [value], eax
    mov dword [last_vec], NONE
    mov dword [last_err], 0
    call report

    mov eax, .smsw_et           ; SMSW after MOV CR0 = 1
    call arm
    smsw ax
    movzx eax, ax
    mov [value], eax
.smsw_et:
    mov esi, msg_smsw_et
    call report

    mov eax, .cr0_et            ; MOV from CR0 after ET was written as 0
    call arm
    mov eax, cr0
    and eax, ~0x10
    mov cr0, eax
    mov eax, cr0
    mov [value], eax
.cr0_et:
    mov esi, msg_cr0_et
    call report

    mov eax, .smsw32            ; SMSW r32 with CR0.WP and CR0.AM (bits 16, 18) set
    call arm
    mov eax, cr0
    or eax, 0x50000
    mov cr0, eax
    mov eax, 0xdeadbeef
    smsw eax
    mov [value], eax
    mov eax, cr0
    and eax, ~0x50000
    mov cr0, eax
.smsw32:
    mov esi, msg_smsw32
    call report

    mov eax, .cr1               ; protected mode: MOV EAX, CR1
    call arm
    db 0x0f, 0x20, 0xc8         ; MOV EAX, CR1
.cr1:
    mov esi, msg_cr1
    call report

    mov eax, .cr5
    call arm
    db 0x0f, 0x22, 0xe8         ; MOV CR5, EAX
.cr5:
    mov esi, msg_cr5
    call report

    mov eax, .cr7
    call arm
    db 0x0f, 0x20, 0xf8         ; MOV EAX, CR7
.cr7:
    mov esi, msg_cr7
    call report

    mov eax, .jmp_rpl           ; far JMP to KERNEL_CS with RPL 3: #GP(0x08)
    call arm
    jmp (KERNEL_CS | 3):.jmp_rpl_landed
.jmp_rpl_landed:
    mov dword [value], 1
.jmp_rpl:
    mov esi, msg_jmp_rpl
    call report

    mov eax, .call_rpl          ; far CALL to KERNEL_CS with RPL 3: #GP(0x08)
    call arm
    call (KERNEL_CS | 3):far_return
    mov dword [value], 1
.call_rpl:
    mov esi, msg_call_rpl
    call report

    mov eax, .iret_ldt          ; IRETD to CS 0x0f (LDT, RPL 3) with no LDT: #GP(0x0c)
    call arm
    push dword 0                ; SS
    push dword 0x80000          ; ESP
    pushfd
    push dword 0x0f             ; CS
    push dword .iret_ldt
    iretd
.iret_ldt:
    mov esi, msg_iret_ldt
    call report

    mov eax, .ltr_null          ; LTR with a null selector, then STR
    call arm
    xor eax, eax
    ltr ax
    mov eax, 0x5555
    str ax
    mov [value], eax
.ltr_null:
    mov esi, msg_ltr_null
    call report

    mov eax, .jmp_ldt           ; far JMP to an LDT descriptor: #GP(0x18)
    call arm
    jmp LDT_SEL:0
.jmp_ldt:
    mov esi, msg_jmp_ldt
    call report

    mov eax, .jmp_intgate       ; far JMP to an interrupt gate in the GDT: #GP(0x38)
    call arm
    jmp INT_GATE:0
.jmp_intgate:
    mov esi, msg_jmp_intgate
    call report

    mov eax, .call_busy         ; far CALL to a busy TSS: #GP(0x40)
    call arm
    call BUSY_TSS:0
.call_busy:
    mov esi, msg_call_busy
    call report

    mov eax, .retf_ldt          ; RETF to an LDT descriptor: #GP(0x18)
    call arm
    push dword LDT_SEL
    push dword .retf_ldt
    retf
.retf_ldt:
    mov esi, msg_retf_ldt
    call report

    mov eax, .call_gate         ; far CALL through a 32-bit call gate (same privilege): taken
    call arm
    call CALL_GATE:0
    mov [value], eax
.call_gate:
    mov esi, msg_call_gate
    call report

    mov eax, .jmp_gate          ; far JMP through the call gate: taken
    call arm
    jmp CALL_GATE:0
.jmp_gate:
    mov esi, msg_jmp_gate
    call report

    mov eax, .popf              ; POPFD of the reserved bits 3, 5, 15, 22-31
    call arm
    pushfd
    or dword [esp], 0xffc08028
    popfd
    pushfd
    pop eax
    mov [value], eax
.popf:
    mov esi, msg_popf
    call report

    mov eax, .mov_cs            ; MOV CS, AX: #UD
    call arm
    db 0x8e, 0xc8
.mov_cs:
    mov esi, msg_mov_cs
    call report

    mov eax, .code16            ; LTR, then a far JMP to a 16-bit code segment and back
    call arm
    mov ax, TSS2_SEL
    ltr ax
    jmp CODE16_SEL:code16
.code16:
    mov esi, msg_code16
    call report

    mov eax, .conforming        ; far CALL to a conforming DPL-0 segment: taken, CPL stays 0
    call arm
    call CONFORMING:conforming_target
    mov [value], eax
.conforming:
    mov esi, msg_conforming
    call report

    mov eax, .ring1             ; far JMP to non-conforming DPL-1 code at CPL 0: #GP(0x58)
    call arm
    jmp RING1_CS:.ring1_landed
.ring1_landed:
    mov dword [value], 1
.ring1:
    mov esi, msg_ring1
    call report

    xor al, al
    jmp exit

conforming_target:              ; reached through CONFORMING; RETF returns to ring 0
    mov eax, 0xc0f0
    retf

gate_target:                    ; reached through CALL_GATE (CALL or JMP)
    cmp dword [resume], protected_mode.jmp_gate
    je .jumped
    mov eax, 0x6a7e
    retf
.jumped:
    mov dword [value], 0x3a7e
    jmp protected_mode.jmp_gate

far_return:
    retf

bits 16
code16:                         ; 16-bit code at ring 0
    mov ax, 0x1616
    mov [value], ax
    jmp dword KERNEL_CS:protected_mode.code16
bits 32

arm:                            ; EAX = where to resume after the test's exception (if any)
    mov [resume], eax
    lea eax, [esp + 4]
    mov [saved_esp], eax
    mov dword [last_vec], NONE
    mov dword [last_err], 0
    mov dword [value], 0
    ret

ud_stub:
    push dword 0
    push dword 6
    jmp record
ts_stub:
    push dword 10
    jmp record
np_stub:
    push dword 11
    jmp record
ss_stub:
    push dword 12
    jmp record
gp_stub:
    push dword 13
record:                         ; stack: vector, error code, frame
    pop dword [last_vec]
    pop dword [last_err]
    mov ax, KERNEL_DS
    mov ds, ax
    mov es, ax
    mov esp, [saved_esp]
    jmp [resume]

report:                         ; ESI = what was tried: "name: vec=.. err=.... val=........"
    push eax
    push ecx
    call puts
    mov esi, msg_vec
    call puts
    mov eax, [last_vec]
    mov ecx, 2
    call put_hex
    mov esi, msg_err
    call puts
    mov eax, [last_err]
    mov ecx, 4
    call put_hex
    mov esi, msg_val
    call puts
    mov eax, [value]
    mov ecx, 8
    call put_hex
    mov al, 10
    call putc
    pop ecx
    pop eax
    ret

%include "../../guests/lib.inc"

align 8
gdt:
    dq 0
    dq 0x00cf9a000000ffff        ; 0x08 ring-0 code, flat
    dq 0x00cf92000000ffff        ; 0x10 ring-0 data, flat
    dw 7, ldt, 0x8200, 0x0000    ; 0x18 LDT (type 2)
    dw 0x67, tss, 0x8900, 0x0000 ; 0x20 32-bit TSS, available
    dq 0x00009a000000ffff        ; 0x28 ring-0 code, 16-bit, 64 KiB
    dw gate_target, KERNEL_CS, 0x8c00, 0x0000   ; 0x30 32-bit call gate, DPL 0
    dw gate_target, KERNEL_CS, 0x8e00, 0x0000   ; 0x38 32-bit interrupt gate (not for JMP)
    dw 0x67, tss, 0x8b00, 0x0000 ; 0x40 32-bit TSS, busy
    dw 0x67, tss2, 0x8900, 0x0000 ; 0x48 another 32-bit TSS, available
    dq 0x00cf9e000000ffff        ; 0x50 ring-0 code, conforming, flat
    dq 0x00cfba000000ffff        ; 0x58 ring-1 code, flat
gdt_end:
gdt_descriptor:
    dw gdt_end - gdt - 1
    dd gdt
align 8
ldt:
    dq 0x00cf92000000ffff
align 4
tss:
    times 0x68 db 0
tss2:
    times 0x68 db 0
resume:     dd 0
saved_esp:  dd 0
last_vec:   dd 0
last_err:   dd 0
value:      dd 0
rm_uds:     db 0

msg_title:       db "divergences: bare machine vs trap and bt", 10, 0
msg_rm_cr:       db "real-mode MOV CR1, CR6 (#UD count in val)", 0
msg_smsw_et:     db "SMSW after MOV CR0 = 1", 0
msg_cr0_et:      db "MOV CR0 with ET clear, then MOV from CR0", 0
msg_smsw32:      db "SMSW r32 with CR0 bits 16 and 18", 0
msg_cr1:         db "MOV EAX, CR1", 0
msg_cr5:         db "MOV CR5, EAX", 0
msg_cr7:         db "MOV EAX, CR7", 0
msg_jmp_rpl:     db "far JMP 0x0b:x (RPL 3 > CPL)", 0
msg_call_rpl:    db "far CALL 0x0b:x (RPL 3 > CPL)", 0
msg_iret_ldt:    db "IRETD to CS 0x0f with no LDT", 0
msg_ltr_null:    db "LTR 0, then STR", 0
msg_jmp_ldt:     db "far JMP to an LDT descriptor", 0
msg_jmp_intgate: db "far JMP to an interrupt gate", 0
msg_call_busy:   db "far CALL to a busy TSS", 0
msg_retf_ldt:    db "RETF to an LDT descriptor", 0
msg_call_gate:   db "far CALL through a call gate", 0
msg_jmp_gate:    db "far JMP through a call gate", 0
msg_popf:        db "POPFD of reserved bits", 0
msg_mov_cs:      db "MOV CS, AX", 0
msg_code16:      db "LTR, far JMP to 16-bit code", 0
msg_conforming:  db "far CALL to a conforming DPL-0 segment", 0
msg_ring1:       db "far JMP to DPL-1 code at CPL 0", 0
msg_vec:         db ": vec=", 0
msg_err:         db " err=", 0
msg_val:         db " val=", 0
