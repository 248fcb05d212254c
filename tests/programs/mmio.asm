; mmio: stores to and loads from a device window above RAM (guest-physical 0xfeb00000)
;
; In 32-bit protected mode: MOV byte, word and dword stores, a MOVZX load and a dword load; it
; prints what it read back and exits with status 0. Natively each access reaches the device; under
; trap, bt and vtx each is an EPT violation exit that the VMM carries out against the MMIO bus.
; With no device there the run ends with a report.

bits 16
org 0x7c00

KERNEL_CS   equ 0x08
KERNEL_DS   equ 0x10
IDT_BASE    equ 0x1000
MMIO        equ 0xfeb00000

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
    call serial_init
    call idt_init
    mov byte [MMIO], 0x41
    mov ax, 0x4342
    mov [MMIO + 2], ax
    mov dword [MMIO + 4], 0x44434241
    movzx eax, byte [MMIO + 1]
    mov ecx, 2
    call put_hex
    mov eax, [MMIO + 8]
    mov ecx, 8
    call put_hex
    mov al, 10
    call putc
    mov al, 0
    jmp exit

align 8
gdt:
    dq 0
    dq 0x00cf9a000000ffff
    dq 0x00cf92000000ffff
gdt_end:
gdt_descriptor:
    dw gdt_end - gdt - 1
    dd gdt

%include "../../guests/lib.inc"
