; triplefault: protected mode with an empty IDT (limit 0); INT3 escalates to a triple fault
;
; It enters 32-bit protected mode with a flat GDT, loads an IDT of limit 0, prints "T" on the
; port-0xE9 console and executes INT3. Vector 3 lies outside the IDT: #GP; vector 13 lies outside
; too: #DF; vector 8 as well: the processor shuts down (triple fault). The run must end with a
; triple-fault report (exit status 3), not through the debug-exit port.

bits 16
org 0x7c00

start:
    cli
    xor ax, ax
    mov ds, ax
    lgdt [gdt_descriptor]
    lidt [idt_descriptor]
    mov eax, cr0
    or eax, 1
    mov cr0, eax
    jmp dword 0x08:protected_mode

bits 32
protected_mode:
    mov ax, 0x10
    mov ds, ax
    mov ss, ax
    mov esp, 0x90000
    mov al, 'T'
    out 0xe9, al
    mov al, 10
    out 0xe9, al
    int3                        ; #BP -> #GP -> #DF -> shutdown
    mov al, 1                   ; not reached
    out 0xf4, al
    hlt

align 8
gdt:
    dq 0
    dw 0xffff, 0x0000           ; 0x08: flat code, DPL 0
    db 0x00, 0x9a, 0xcf, 0x00
    dw 0xffff, 0x0000           ; 0x10: flat data, DPL 0
    db 0x00, 0x92, 0xcf, 0x00
gdt_end:

gdt_descriptor:
    dw gdt_end - gdt - 1
    dd gdt

idt_descriptor:
    dw 0                        ; limit 0: not even vector 0 fits
    dd 0
