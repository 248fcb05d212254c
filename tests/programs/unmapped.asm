; unmapped: protected mode, paging off, reads guest-physical 0xF0000000, far beyond 32 MiB of RAM
;
; Flat 4 GiB segments make the linear (= physical) address 0xF0000000 reachable; no RAM or MMIO
; window is there. The run must end with a report naming the address (exit status 3).

bits 16
org 0x7c00

start:
    cli
    xor ax, ax
    mov ds, ax
    lgdt [gdt_descriptor]
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
    mov al, 'U'
    out 0xe9, al
    mov al, 10
    out 0xe9, al
    mov eax, [0xf0000000]       ; nothing is there
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
