; testdev-iomem: pc-testdev's 64 KiB scratch MMIO page at guest-physical 0xff000000
;
; The same stores and loads as mmio.asm, against QEMU's pc-testdev iomem region, which reads back
; what was stored: it prints the byte at +2 (0x42) and the dword at +4 (0x44434241).

bits 16
org 0x7c00

KERNEL_CS   equ 0x08
KERNEL_DS   equ 0x10
IDT_BASE    equ 0x1000
MMIO        equ 0xff000000

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
    movzx eax, byte [MMIO + 2]
    mov ecx, 2
    call put_hex
    mov eax, [MMIO + 4]
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
