; zeroed-gdt: a GDT of zeroed descriptors, then MOV DS; the #GP escalates to a triple fault
;
; It enters 32-bit protected mode with a flat GDT and an IDT whose #GP and #DF gates name the
; flat code segment 0x08, prints "Z" on the port-0xE9 console, loads a GDT whose descriptors
; (past the null one) are all zero and executes MOV DS, 0x10. Descriptor 0x10 is not present:
; #GP(0x10); its gate names CS 0x08, now zero as well: #GP during delivery, #DF; the #DF gate
; names CS 0x08 too: the processor shuts down. Under bt the MOV DS is a translation callout, so
; the triple fault arises while the VMM emulates it; the run must still end as a triple fault.

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
    mov al, 'Z'
    out 0xe9, al
    mov al, 10
    out 0xe9, al
    lgdt [zeroed_descriptor]
    mov ax, 0x10
    mov ds, ax                  ; #GP(0x10) -> #GP -> #DF -> #GP: shutdown
    mov al, 1                   ; not reached
    out 0xf4, al
    hlt

handler:                        ; not reached: every delivery fails
    hlt

align 8
gdt:
    dq 0
    dw 0xffff, 0x0000           ; 0x08: flat code, DPL 0
    db 0x00, 0x9a, 0xcf, 0x00
    dw 0xffff, 0x0000           ; 0x10: flat data, DPL 0
    db 0x00, 0x92, 0xcf, 0x00
gdt_end:

zeroed_gdt:
    times 4 dq 0
zeroed_gdt_end:

idt:
    times 8 dq 0
    dw handler, 0x08, 0x8e00, 0 ; 8: #DF, interrupt gate to 0x08:handler
    times 4 dq 0
    dw handler, 0x08, 0x8e00, 0 ; 13: #GP
idt_end:

gdt_descriptor:
    dw gdt_end - gdt - 1
    dd gdt

zeroed_descriptor:
    dw zeroed_gdt_end - zeroed_gdt - 1
    dd zeroed_gdt

idt_descriptor:
    dw idt_end - idt - 1
    dd idt
