; pf_paths: a #PF on every path that reaches the MMU's fill, checked against the SDM
;
; The MMU raises a guest #PF from inside the TLB fill, without ending the CPU's run; this guest
; checks that the architectural result is the same whatever the access that faulted:
;   - a dword load across a page boundary into a not-present page: error 0x0, CR2 = the
;     boundary (the first byte on the faulting page);
;   - a dword store across the same boundary: error 0x2, CR2 = the boundary, and the two bytes
;     below the boundary are not written (a faulting store writes nothing);
;   - REP MOVSD whose destination runs into the not-present page after two of four dwords:
;     error 0x2, CR2 = the boundary, ECX = 2 and EDI = the boundary at the fault (the string
;     instruction stops between iterations, restartable);
;   - a 4 MiB page whose PDE has reserved bit 21 set: error 0x9 (P | RSVD);
;   - CR4.SMEP, a supervisor CALL into a user page: error 0x11 (P | I/D), CR2 = the target;
;   - a #PF at ring 3 through a gate to ring-1 code whose TSS.ESP1 lies on a not-present page:
;     the push faults, #PF during #PF makes a #DF (SDM Table 6-5), delivered to ring 0 on
;     TSS.ESP0 with error code 0, CR2 = ESP1 - 4 (the first push, SS, faults) and the frame of
;     the ring-3 code.
; Exit status 0 if every check passed, 1 if one failed, 3 on an unexpected exception.

bits 16
org 0x7c00

KERNEL_CS   equ 0x08
KERNEL_DS   equ 0x10
USER_CS     equ 0x18 | 3
USER_DS     equ 0x20 | 3
TSS_SEL     equ 0x28
RING1_CS    equ 0x30 | 1
RING1_DS    equ 0x38 | 1
IDT_BASE    equ 0x1000
KSTACK_TOP  equ 0x90000
ESP0_TOP    equ 0x70000
USTACK_TOP  equ 0x80000
PD          equ 0x20000
IDENTITY    equ 0x22000         ; maps 0-4 MiB 1:1, P|RW|US
TABLE       equ 0x23000         ; the window's table
FRAME0      equ 0x30000
SOURCE      equ 0x31000
WINDOW      equ 0x50000000      ; page 0 present (user, RW), pages 1 and 2 not present
BOUNDARY    equ WINDOW + 0x1000
BAD_ESP1    equ WINDOW + 0x3000 ; pushes land on page 2
RSVD_PAGE   equ 0x90000000      ; a 4 MiB PDE with bit 21 set
P           equ 1
RW          equ 2
US          equ 4
PS          equ 0x80
CR4_PSE     equ 0x10
CR4_SMEP    equ 0x100000

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
    mov ss, ax
    mov esp, KSTACK_TOP
    mov ds, ax
    mov es, ax
    mov fs, ax
    mov gs, ax
    cld
    call serial_init
    call idt_init
    mov eax, 14
    mov ebx, page_fault
    mov cl, 0x8e
    call set_gate
    mov eax, 8
    mov ebx, double_fault
    mov cl, 0x8e
    call set_gate
    mov eax, 0x80
    mov ebx, back_to_kernel
    mov cl, 0xee
    call set_gate
    mov eax, tss
    mov [gdt + TSS_SEL + 2], ax
    shr eax, 16
    mov [gdt + TSS_SEL + 4], al
    mov [gdt + TSS_SEL + 7], ah
    mov dword [tss + 4], ESP0_TOP
    mov dword [tss + 8], KERNEL_DS
    mov dword [tss + 12], BAD_ESP1
    mov dword [tss + 16], RING1_DS
    mov ax, TSS_SEL
    ltr ax
    mov esi, msg_title
    call puts

    mov edi, PD                 ; the directory, the identity table and the window's table
    xor eax, eax
    mov ecx, 4 * 1024
    rep stosd
    mov edi, IDENTITY
    mov eax, P | RW | US
    mov ecx, 1024
.identity:
    stosd
    add eax, 0x1000
    loop .identity
    mov dword [PD], IDENTITY | P | RW | US
    mov dword [PD + (WINDOW >> 22) * 4], TABLE | P | RW | US
    mov dword [PD + (RSVD_PAGE >> 22) * 4], 0x400000 | 0x200000 | P | RW | PS
    mov dword [TABLE], FRAME0 | P | RW | US
    mov byte [FRAME0 + 0x20], 0xc3                      ; RET, in a user page
    mov dword [FRAME0 + 0xffc], 0x11223344
    mov dword [SOURCE], 0xa1a1a1a1
    mov dword [SOURCE + 4], 0xb2b2b2b2
    mov dword [SOURCE + 8], 0xc3c3c3c3
    mov dword [SOURCE + 12], 0xd4d4d4d4
    mov eax, cr4
    or eax, CR4_PSE
    mov cr4, eax
    mov eax, PD
    mov cr3, eax
    mov eax, cr0
    or eax, 0x80010000          ; PG, WP
    mov cr0, eax
    jmp .paging_on
.paging_on:

    ; --- a load and a store across a page boundary ----------------------------------------
    mov esi, msg_cross_load
    call puts
    mov dword [resume], .load_done
    mov [kstack], esp
    mov eax, [BOUNDARY - 2]
    jmp no_fault
.load_done:
    mov ebx, BOUNDARY
    mov edx, 0x0
    call expect_fault
    mov esi, msg_cross_store
    call puts
    mov dword [resume], .store_done
    mov [kstack], esp
    mov dword [BOUNDARY - 2], 0x55667788
    jmp no_fault
.store_done:
    mov ebx, BOUNDARY
    mov edx, 0x2
    call expect_fault
    mov esi, msg_untouched
    call puts
    mov eax, [FRAME0 + 0xffc]
    mov ecx, 8
    call put_hex
    cmp eax, 0x11223344
    call check

    ; --- REP MOVSD into the not-present page ---------------------------------------------
    mov esi, msg_rep
    call puts
    mov dword [resume], .rep_done
    mov [kstack], esp
    mov esi, SOURCE
    mov edi, BOUNDARY - 8
    mov ecx, 4
    rep movsd
    jmp no_fault
.rep_done:
    mov ebx, BOUNDARY
    mov edx, 0x2
    call expect_fault
    mov esi, msg_rep_regs
    call puts
    mov eax, [fault_ecx]
    mov ecx, 1
    call put_hex
    mov esi, msg_edi
    call puts
    mov eax, [fault_edi]
    mov ecx, 8
    call put_hex
    mov esi, msg_copied
    call puts
    mov eax, [FRAME0 + 0xffc]
    mov ecx, 8
    call put_hex
    cmp dword [fault_ecx], 2
    jne .rep_checked
    cmp dword [fault_edi], BOUNDARY
    jne .rep_checked
    cmp eax, 0xb2b2b2b2
.rep_checked:
    call check

    ; --- reserved bit, SMEP --------------------------------------------------------------
    mov esi, msg_rsvd
    call puts
    mov dword [resume], .rsvd_done
    mov [kstack], esp
    mov eax, [RSVD_PAGE + 0x345]
    jmp no_fault
.rsvd_done:
    mov ebx, RSVD_PAGE + 0x345
    mov edx, 0x9
    call expect_fault
    mov esi, msg_smep
    call puts
    mov dword [PD], IDENTITY | P | RW   ; the kernel's pages: supervisor while SMEP is on
    mov eax, cr3
    mov cr3, eax
    mov eax, cr4
    or eax, CR4_SMEP
    mov cr4, eax
    mov dword [resume], .smep_done
    mov [kstack], esp
    mov ebx, WINDOW + 0x20
    call ebx
    jmp no_fault
.smep_done:
    mov eax, cr4
    and eax, ~CR4_SMEP
    mov cr4, eax
    mov dword [PD], IDENTITY | P | RW | US
    mov eax, cr3
    mov cr3, eax
    mov ebx, WINDOW + 0x20
    mov edx, 0x11
    call expect_fault

    ; --- #PF while delivering #PF: #DF ---------------------------------------------------
    mov esi, msg_df
    call puts
    mov word [IDT_BASE + 14 * 8 + 2], RING1_CS
    mov dword [resume], .df_done
    mov [kstack], esp
    push USER_DS
    push USTACK_TOP
    push 0x2
    push USER_CS
    push user_read
    iretd
.df_done:
    mov esi, msg_df_seen
    call puts
    mov eax, [df_error]
    mov ecx, 1
    call put_hex
    mov esi, msg_cr2
    call puts
    mov eax, [df_cr2]
    mov ecx, 8
    call put_hex
    mov esi, msg_df_ring
    call puts
    mov eax, [df_cs]
    and eax, 3
    call put_dec
    cmp dword [df_error], 0
    jne .df_checked
    cmp dword [df_cr2], BAD_ESP1 - 4
    jne .df_checked
    cmp eax, 3
    jne .df_checked
.df_checked:
    call check
    jmp finish

user_read:
    mov eax, [BOUNDARY + 0x10]
    int 0x80

no_fault:                       ; the probe did not fault
    mov esi, msg_no_fault
    call puts
    mov eax, 1
    test eax, eax
    call check
    mov esp, [kstack]
    jmp [resume]

expect_fault:                   ; EBX = the expected CR2, EDX = the expected error code
    mov esi, msg_error
    call puts
    mov eax, [last_error]
    mov ecx, 2
    call put_hex
    mov esi, msg_cr2
    call puts
    mov eax, [last_cr2]
    mov ecx, 8
    call put_hex
    cmp [last_error], edx
    jne .checked
    cmp [last_cr2], ebx
.checked:
    call check
    ret

; ----- #PF: record, then continue at the resume point on the kernel stack --------------------
page_fault:
    mov [fault_ecx], ecx
    mov [fault_edi], edi
    pop dword [last_error]
    mov eax, cr2
    mov [last_cr2], eax
    mov esp, [kstack]
    jmp [resume]

; ----- #DF: record, give #PF its ring-0 handler back, continue at the resume point -------------
double_fault:                   ; stack: error code, EIP, CS, EFLAGS, ESP, SS
    pop dword [df_error]
    mov eax, cr2
    mov [df_cr2], eax
    mov eax, [esp + 4]
    mov [df_cs], eax
    mov word [IDT_BASE + 14 * 8 + 2], KERNEL_CS
    mov esp, [kstack]
    jmp [resume]

back_to_kernel:
    mov esp, [kstack]
    jmp [resume]

%include "../../guests/lib.inc"

last_error:     dd -1
last_cr2:       dd 0
fault_ecx:      dd 0
fault_edi:      dd 0
df_error:       dd -1
df_cr2:         dd 0
df_cs:          dd 0
resume:         dd 0
kstack:         dd 0

align 8
gdt:
    dq 0
    dw 0xffff, 0x0000           ; 0x08: ring-0 code, flat
    db 0x00, 0x9a, 0xcf, 0x00
    dw 0xffff, 0x0000           ; 0x10: ring-0 data, flat
    db 0x00, 0x92, 0xcf, 0x00
    dw 0xffff, 0x0000           ; 0x18: ring-3 code, flat
    db 0x00, 0xfa, 0xcf, 0x00
    dw 0xffff, 0x0000           ; 0x20: ring-3 data, flat
    db 0x00, 0xf2, 0xcf, 0x00
    dw 103, 0x0000              ; 0x28: 32-bit TSS
    db 0x00, 0x89, 0x00, 0x00
    dw 0xffff, 0x0000           ; 0x30: ring-1 code, flat
    db 0x00, 0xba, 0xcf, 0x00
    dw 0xffff, 0x0000           ; 0x38: ring-1 data, flat
    db 0x00, 0xb2, 0xcf, 0x00
gdt_end:

gdt_descriptor:
    dw gdt_end - gdt - 1
    dd gdt

align 4
tss:
    times 25 dd 0
    dw 0
    dw 104

msg_title:       db "pf_paths: #PF on page-crossing, string, reserved-bit, SMEP and event-delivery accesses", 10, 0
msg_cross_load:  db "dword load across into a not-present page: ", 0
msg_cross_store: db "dword store across into a not-present page: ", 0
msg_untouched:   db "bytes below the boundary after the faulting store: ", 0
msg_rep:         db "REP MOVSD into a not-present page: ", 0
msg_rep_regs:    db "at the fault: ECX ", 0
msg_edi:         db ", EDI ", 0
msg_copied:      db ", dword below the boundary ", 0
msg_rsvd:        db "4 MiB PDE with reserved bit 21: ", 0
msg_smep:        db "SMEP, supervisor fetch from a user page: ", 0
msg_df:          db "#PF at ring 3 to a ring-1 handler whose ESP1 is not present: ", 0
msg_df_seen:     db "#DF, error ", 0
msg_df_ring:     db ", from ring ", 0
msg_no_fault:    db "no #PF", 0
msg_error:       db "error ", 0
msg_cr2:         db ", CR2 ", 0
