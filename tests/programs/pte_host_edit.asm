; pte_host_edit: a page-table entry the host rewrites while the guest runs
;
; Paging on, WINDOW mapped to FRAME_A (which holds 0xaaaaaaaa). The guest reads WINDOW (so a VMM
; with shadow page tables builds its shadow), then reaches host_edit, where a test's debugger
; rewrites the PTE to FRAME_B (0xbbbbbbbb) in guest-physical memory. The guest then INVLPGs
; WINDOW and reads it again: after the INVLPG the CPU must walk the new entry, whatever a VMM
; derived from the old one. Prints both values; exit status 0 if the second read saw FRAME_B.

bits 16
org 0x7c00

KERNEL_CS   equ 0x08
KERNEL_DS   equ 0x10
IDT_BASE    equ 0x1000
KSTACK_TOP  equ 0x90000
PD          equ 0x20000
IDENTITY    equ 0x21000
TABLE       equ 0x22000
FRAME_A     equ 0x30000
FRAME_B     equ 0x31000
WINDOW      equ 0x50000000
WINDOW_PTE  equ TABLE           ; the PTE of WINDOW (the window table's entry 0)

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
    mov ds, ax
    mov es, ax
    mov esp, KSTACK_TOP
    cld
    call serial_init
    call idt_init
    mov edi, PD
    xor eax, eax
    mov ecx, 3 * 1024
    rep stosd
    mov edi, IDENTITY
    mov eax, 3
    mov ecx, 1024
.identity:
    stosd
    add eax, 0x1000
    loop .identity
    mov dword [PD], IDENTITY | 3
    mov dword [PD + (WINDOW >> 22) * 4], TABLE | 3
    mov dword [WINDOW_PTE], FRAME_A | 3
    mov dword [FRAME_A], 0xaaaaaaaa
    mov dword [FRAME_B], 0xbbbbbbbb
    mov eax, PD
    mov cr3, eax
    mov eax, cr0
    or eax, 0x80000000
    mov cr0, eax
    jmp .paging_on
.paging_on:
    mov esi, msg_first
    call puts
    mov eax, [WINDOW]
    mov ecx, 8
    call put_hex
host_edit:                      ; a debugger rewrites WINDOW_PTE here
    nop
    invlpg [WINDOW]
    mov esi, msg_then
    call puts
    mov eax, [WINDOW]
    mov ecx, 8
    call put_hex
    cmp eax, 0xbbbbbbbb
    call check
    jmp finish

%include "../../guests/lib.inc"

align 8
gdt:
    dq 0
    dw 0xffff, 0x0000           ; 0x08: ring-0 code, flat
    db 0x00, 0x9a, 0xcf, 0x00
    dw 0xffff, 0x0000           ; 0x10: ring-0 data, flat
    db 0x00, 0x92, 0xcf, 0x00
gdt_end:

gdt_descriptor:
    dw gdt_end - gdt - 1
    dd gdt

msg_first:  db "WINDOW reads ", 0
msg_then:   db ", after the host's PTE edit and INVLPG ", 0
