; callouts32: sensitive instructions at guest ring 0 for `trapvisor bench` (benchmarks/bt_callouts.py)
;
; Boots like exits32.asm (flat ring-0 GDT, CR0.PE, far jump), then runs one loop of
; `iterations` passes at guest ring 0, chosen by `variant` (the loop counter is EBP: RDMSR
; reads ECX):
;   0  empty      dec ebp / jnz only
;   1  rdmsr      rdmsr of IA32_APIC_BASE   (ring 1 under trap and bt: #GP -> emulate)
;   2  mov cr3    mov eax, cr3              (ring 1 under trap and bt: #GP -> emulate)
;   3  pushf/popf pushfd, popfd             (ring 1: no fault; a bt callout each, trap misses them)
;   4  smsw       smsw eax                  (ring 1: no fault; a bt callout, trap misses it)
; benchmarks/bt_callouts.py patches the dwords after "BNCH".

bits 16
org 0x7c00

KERNEL_CS   equ 0x08
KERNEL_DS   equ 0x10
STACK_TOP   equ 0x90000
DEBUG_EXIT  equ 0xf4
IA32_APIC_BASE equ 0x1b

start:
    jmp main

align 4
params:
    db "BNCH"
iterations: dd 100000
variant:    dd 1
entry32:    dd bench32

main:
    cli
    xor ax, ax
    mov ds, ax
    lgdt [gdt_descriptor]
    mov eax, cr0
    or eax, 1                   ; CR0.PE
    mov cr0, eax
    jmp dword KERNEL_CS:protected_mode

bits 32
protected_mode:
    mov ax, KERNEL_DS
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov esp, STACK_TOP

bench32:
    mov ebp, [iterations]
    mov ecx, IA32_APIC_BASE
    mov eax, [variant]
    cmp eax, 1
    je rdmsr_loop
    cmp eax, 2
    je cr3_loop
    cmp eax, 3
    je pushf_loop
    cmp eax, 4
    je smsw_loop

empty_loop:
    dec ebp
    jnz empty_loop
    jmp done

rdmsr_loop:
    rdmsr
    dec ebp
    jnz rdmsr_loop
    jmp done

cr3_loop:
    mov eax, cr3
    dec ebp
    jnz cr3_loop
    jmp done

pushf_loop:
    pushfd
    popfd
    dec ebp
    jnz pushf_loop
    jmp done

smsw_loop:
    smsw eax
    dec ebp
    jnz smsw_loop

done:
    xor al, al
    out DEBUG_EXIT, al
    hlt

align 8
gdt:
    dq 0                        ; 0x00: null
    dw 0xffff, 0x0000           ; 0x08: code, base 0, limit 4 GiB, 32-bit, DPL 0, execute/read
    db 0x00, 0x9a, 0xcf, 0x00
    dw 0xffff, 0x0000           ; 0x10: data, base 0, limit 4 GiB, 32-bit, DPL 0, read/write
    db 0x00, 0x92, 0xcf, 0x00
gdt_end:

gdt_descriptor:
    dw gdt_end - gdt - 1
    dd gdt
