; privileged: executes every privileged instruction the trap engine emulates and prints what it sees
;
; In 32-bit protected mode at (guest) ring 0: MOV to/from CR0/CR2/CR3/CR4, CLTS, LMSW, MOV to/from
; DR0/DR7, RDMSR/WRMSR (IA32_SYSENTER_CS), LLDT, LTR (and the TSS busy bit it sets), INVLPG,
; WBINVD, LGDT/LIDT reloads, segment loads with MOV/POP/LDS/LSS, far CALL/RETF and far JMP to its
; own code selector, IRETD to itself, CLI/STI. Each line prints values, so an engine that
; emulates one of them differently from the bare machine changes the output.

bits 16
org 0x7c00

KERNEL_CS   equ 0x08
KERNEL_DS   equ 0x10
LDT_SEL     equ 0x18
TSS_SEL     equ 0x20
IDT_BASE    equ 0x1000
STACK_TOP   equ 0x90000

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
    call serial_init
    call idt_init
    mov esi, msg_title
    call puts

    mov esi, msg_cr0            ; CLTS clears TS; LMSW sets MP and TS (low 4 bits only)
    call puts
    clts
    mov eax, cr0
    call hex8
    mov ax, 0x000b
    lmsw ax
    mov eax, cr0
    call hex8
    clts
    mov eax, cr0
    call hex8
    call newline

    mov esi, msg_cr             ; CR3 and CR4 round trips, CR2 write/read
    call puts
    mov eax, 0x00123000
    mov cr3, eax
    mov eax, cr3
    call hex8
    mov eax, 0x00000010         ; CR4.PSE
    mov cr4, eax
    mov eax, cr4
    call hex8
    mov eax, 0xdeadb000
    mov cr2, eax
    mov eax, cr2
    call hex8
    call newline

    mov esi, msg_dr
    call puts
    mov eax, 0x00007c00
    mov dr0, eax
    mov eax, dr0
    call hex8
    mov eax, dr7
    call hex8
    call newline

    mov esi, msg_msr            ; IA32_SYSENTER_CS = 0x174
    call puts
    mov ecx, 0x174
    mov eax, 0x0008
    xor edx, edx
    wrmsr
    xor eax, eax
    rdmsr
    call hex8
    call newline

    mov esi, msg_ldt            ; LLDT, then a data selector from the LDT (TI = 1)
    call puts
    mov ax, LDT_SEL
    lldt ax
    mov ax, 0x0004              ; LDT entry 0, RPL 0
    mov es, ax
    mov eax, [es:0x7c00]        ; the LDT segment has base 0: reads the boot code
    call hex8
    xor ax, ax
    lldt ax
    mov ax, KERNEL_DS
    mov es, ax
    call newline

    mov esi, msg_tr             ; LTR marks the TSS descriptor busy (type 9 -> 11)
    call puts
    mov ax, TSS_SEL
    ltr ax
    movzx eax, byte [gdt + TSS_SEL + 5]
    call hex8
    call newline

    mov esi, msg_misc           ; INVLPG, WBINVD, LIDT/LGDT reloads: no visible effect
    call puts
    invlpg [0x7c00]
    wbinvd
    lidt [my_idt_descriptor]
    lgdt [gdt_descriptor]
    mov eax, 0x600d
    call hex8
    call newline

    mov esi, msg_seg            ; POP DS, LDS, LSS reload the kernel selectors
    call puts
    push dword KERNEL_DS
    pop ds
    lds ebx, [far_data]
    mov eax, ebx
    call hex8
    mov edx, esp
    lss esp, [far_stack]
    mov eax, esp
    call hex8
    mov esp, edx
    xor eax, eax
    mov ax, ds
    call hex8
    call newline

    mov esi, msg_far            ; far CALL/RETF, far JMP and IRETD to ring-0 code
    call puts
    call KERNEL_CS:far_target
    call hex8
    jmp KERNEL_CS:.after_jmp
.after_jmp:
    pushfd
    push dword KERNEL_CS
    push dword .after_iret
    iretd
.after_iret:
    mov eax, 0x1e7d
    call hex8
    call newline

    mov esi, msg_if             ; CLI/STI with no interrupt source
    call puts
    sti
    cli
    mov eax, 1
    call hex8
    call newline

    mov al, 0
    jmp exit

far_target:
    mov eax, 0xfa4
    retf

hex8:
    push ecx
    mov ecx, 8
    call put_hex
    mov al, ' '
    call putc
    pop ecx
    ret

newline:
    mov al, 10
    jmp putc

%include "../../guests/lib.inc"

align 8
gdt:
    dq 0
    dq 0x00cf9a000000ffff        ; 0x08 ring-0 code, flat
    dq 0x00cf92000000ffff        ; 0x10 ring-0 data, flat
    dw ldt_end - ldt - 1, ldt, 0x8200, 0x0000   ; 0x18 LDT (type 2), base = ldt (< 64 KiB)
    dw 0x67, tss, 0x8900, 0x0000               ; 0x20 32-bit TSS, available
gdt_end:
gdt_descriptor:
    dw gdt_end - gdt - 1
    dd gdt
my_idt_descriptor:
    dw 0x7ff
    dd IDT_BASE
align 8
ldt:
    dq 0x00cf92000000ffff        ; LDT entry 0: flat ring-0 data
ldt_end:
align 4
tss:
    times 0x68 db 0
far_data:
    dd 0x1234
    dw KERNEL_DS
far_stack:
    dd 0x80000
    dw KERNEL_DS

msg_title:  db "privileged: every instruction the trap engine emulates", 10, 0
msg_cr0:    db "CR0 after CLTS, LMSW 0xb, CLTS: ", 0
msg_cr:     db "CR3, CR4, CR2 round trips: ", 0
msg_dr:     db "DR0, DR7: ", 0
msg_msr:    db "IA32_SYSENTER_CS: ", 0
msg_ldt:    db "LLDT, then a load through the LDT: ", 0
msg_tr:     db "LTR, then the TSS access byte: ", 0
msg_misc:   db "INVLPG, WBINVD, LIDT, LGDT: ", 0
msg_seg:    db "POP DS, LDS, LSS: ", 0
msg_far:    db "far CALL/RETF, far JMP, IRETD: ", 0
msg_if:     db "STI, CLI: ", 0
