; selfmod: code written and rewritten at run time, and code that reads its own bytes
;
; In 32-bit protected mode at (guest) ring 0: copies a routine to a page that never held code and
; calls it (code loaded at run time); calls a routine, then rewrites its first instruction into
; MOV AX,CS and calls it again (self-modifying code); prints the bytes of an SMSW and of a MOV
; AX,SS in its own code. MOV AX,CS/SS leak the real ring under trap; bt must rescan what changed.

bits 16
org 0x7c00

KERNEL_CS   equ 0x08
KERNEL_DS   equ 0x10
IDT_BASE    equ 0x1000
LOADED      equ 0x20000
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
    mov ss, ax
    mov esp, STACK_TOP
    call serial_init
    call idt_init
    mov esi, msg_title
    call puts

    mov esi, msg_loaded         ; copy read_cs to a fresh page and run it there
    call puts
    mov esi, read_cs
    mov edi, LOADED
    mov ecx, read_cs_end - read_cs
    rep movsb
    xor eax, eax
    call LOADED
    mov ecx, 4
    call put_hex
    call newline

    mov esi, msg_rewritten      ; run patchme once (scanned), rewrite it, run it again
    call puts
    mov eax, 0xaa
    call patchme
    mov ecx, 4
    call put_hex
    call space
    mov byte [patchme], 0x66    ; 66 8c c8 = mov ax, cs (over 3 NOPs)
    mov byte [patchme + 1], 0x8c
    mov byte [patchme + 2], 0xc8
    call patchme
    mov ecx, 4
    call put_hex
    call newline

    mov esi, msg_bytes          ; the guest reads its own sensitive instructions
    call puts
    mov eax, [smsw_site]
    mov ecx, 8
    call put_hex
    call space
    mov eax, [ss_site]
    mov ecx, 8
    call put_hex
    call newline
smsw_site:
    smsw ax
ss_site:
    mov ax, ss
    mov al, 0
    jmp exit

read_cs:
    mov ax, cs
    ret
read_cs_end:

patchme:
    nop
    nop
    nop
    ret

newline:
    push eax
    mov al, 10
    call putc
    pop eax
    ret

space:
    push eax
    mov al, ' '
    call putc
    pop eax
    ret

msg_title       db "selfmod: run-time code, self-modifying code, reading code", 10, 0
msg_loaded      db "loaded code  MOV AX,CS = ", 0
msg_rewritten   db "rewritten    before, after = ", 0
msg_bytes       db "own code     SMSW, MOV AX,SS bytes = ", 0

align 8
gdt:
    dq 0
    dq 0x00cf9a000000ffff       ; 0x08 ring-0 code, flat
    dq 0x00cf92000000ffff       ; 0x10 ring-0 data, flat
gdt_end:
gdt_descriptor:
    dw gdt_end - gdt - 1
    dd gdt

%include "../../guests/lib.inc"
