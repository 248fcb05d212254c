; tables-outside-ram: descriptor tables, a stack and a handler segment that lie outside guest RAM
;
; The guest reads one scenario letter from the UART (run it with --input X), prints it, then:
;   r  real mode: an IVT (IDTR) based outside RAM, then INT 0x21
;   i  protected mode: an IDT based outside RAM, then INT3
;   g  protected mode: a GDT based outside RAM, then MOV ES (a data segment load)
;   j  protected mode: a GDT based outside RAM, then a far JMP
;   h  protected mode: INT3 through a gate whose code selector's descriptor lies outside RAM
;   s  protected mode: ESP outside RAM, then INT3 (the frame is pushed outside RAM)
; None of these addresses has memory behind it: on this machine an access there ends the run
; (a fault with a report naming the guest-physical address), on the bare machine as under every
; engine; no engine may fail in the hypervisor instead. RAM is the default 32 MiB.

bits 16
org 0x7c00

KERNEL_CS   equ 0x08
KERNEL_DS   equ 0x10
IDT_BASE    equ 0x1000
RAM_END     equ 0x2000000
HIGH_GDT    equ RAM_END - 0x1000    ; a GDT whose entries from 0x1000 on lie outside RAM
OUTSIDE     equ 0xf0000000

start:
    cli
    xor ax, ax
    mov ds, ax
    mov ss, ax
    mov sp, 0x7c00
    mov dx, 0x3f8 + 5
.wait:
    in al, dx
    test al, 0x01               ; LSR.DR: the scenario letter arrived
    jz .wait
    mov dx, 0x3f8
    in al, dx
    mov [scenario], al
    out 0xe9, al
    cmp al, 'r'
    jne .protected
    o32 lidt [outside_table]    ; real mode: IDTR.base = 0xf0000000 (32-bit operand size)
    int 0x21
    jmp .failed
.protected:
    lgdt [gdt_descriptor]
    mov eax, cr0
    or eax, 1
    mov cr0, eax
    jmp dword KERNEL_CS:protected_mode
.failed:
    mov al, 1
    out 0xf4, al
    hlt

bits 32
protected_mode:
    mov ax, KERNEL_DS
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov esp, 0x90000
    call idt_init
    mov al, [scenario]
    cmp al, 'i'
    je idt_outside
    cmp al, 'g'
    je gdt_outside_load
    cmp al, 'j'
    je gdt_outside_jump
    cmp al, 'h'
    je handler_outside
    cmp al, 's'
    je stack_outside
    mov al, 2
    jmp exit

idt_outside:
    lidt [outside_table]
    int3
    jmp survived

gdt_outside_load:
    lgdt [outside_table]
    mov ax, KERNEL_DS
    mov es, ax
    jmp survived

gdt_outside_jump:
    lgdt [outside_table]
    jmp KERNEL_CS:survived

handler_outside:
    mov esi, gdt                ; copy the GDT to the last page of RAM, limit 64 KiB
    mov edi, HIGH_GDT
    mov ecx, (gdt_end - gdt) / 4
    rep movsd
    lgdt [high_gdt_descriptor]
    mov word [IDT_BASE + 3 * 8 + 2], 0x1008   ; gate 3's selector: entry 0x1008, outside RAM
    int3
    jmp survived

stack_outside:
    mov esp, OUTSIDE + 0x100
    int3
    jmp survived

survived:
    mov al, 1
    jmp exit

%include "../../guests/lib.inc"

align 8
gdt:
    dq 0
    dq 0x00cf9a000000ffff        ; 0x08 ring-0 code, flat
    dq 0x00cf92000000ffff        ; 0x10 ring-0 data, flat
    dq 0
gdt_end:
gdt_descriptor:
    dw gdt_end - gdt - 1
    dd gdt
high_gdt_descriptor:
    dw 0xffff
    dd HIGH_GDT
outside_table:
    dw 0x7ff
    dd OUTSIDE
scenario:
    db 0
