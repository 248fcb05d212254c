; outer-return: IRET from ring 0 to ring 3 nulls the data segment registers ring 3 may not use
;
; It enters 32-bit protected mode with a flat GDT (ring-0 and ring-3 code and data), loads DS
; with the null selector 0x0003 (RPL 3) and ES with the ring-0 data selector 0x10, and IRETs to
; ring 3. On a return to an outer privilege level each data segment register whose DPL is below
; the new CPL (a null selector's cache has DPL 0) is loaded with the null selector: ring 3 prints
; "ds=0000 es=0000" on the port-0xE9 console (I/O is not privilege-checked by the CPU model).

bits 16
org 0x7c00

KERNEL_CS   equ 0x08
KERNEL_DS   equ 0x10
USER_CS     equ 0x1b
USER_DS     equ 0x23

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
    mov ss, ax
    mov esp, 0x90000
    mov ax, 0x0003              ; a null selector with RPL 3
    mov ds, ax
    push dword USER_DS          ; SS
    push dword 0x80000          ; ESP
    push dword 0x2              ; EFLAGS
    push dword USER_CS
    push dword user
    iretd

user:
    mov al, 'd'
    out 0xe9, al
    mov al, 's'
    out 0xe9, al
    mov ax, ds
    call print_selector
    mov al, ' '
    out 0xe9, al
    mov al, 'e'
    out 0xe9, al
    mov al, 's'
    out 0xe9, al
    mov ax, es
    call print_selector
    mov al, 10
    out 0xe9, al
    xor al, al
    out 0xf4, al                ; exit status 0
    hlt

print_selector:                 ; "=" and AX as 4 hex digits
    mov bx, ax
    mov al, '='
    out 0xe9, al
    mov ecx, 4
.digit:
    rol bx, 4
    mov al, bl
    and al, 0xf
    add al, '0'
    cmp al, '9'
    jbe .out
    add al, 'a' - '9' - 1
.out:
    out 0xe9, al
    loop .digit
    ret

align 8
gdt:
    dq 0
    dw 0xffff, 0x0000           ; 0x08: flat code, DPL 0
    db 0x00, 0x9a, 0xcf, 0x00
    dw 0xffff, 0x0000           ; 0x10: flat data, DPL 0
    db 0x00, 0x92, 0xcf, 0x00
    dw 0xffff, 0x0000           ; 0x18: flat code, DPL 3
    db 0x00, 0xfa, 0xcf, 0x00
    dw 0xffff, 0x0000           ; 0x20: flat data, DPL 3
    db 0x00, 0xf2, 0xcf, 0x00
gdt_end:

gdt_descriptor:
    dw gdt_end - gdt - 1
    dd gdt
