; apic: the local APIC's register page, before and after IA32_APIC_BASE moves it
;
; 32-bit protected mode. Reads of registers VT-x's APIC-register virtualization serves without an
; exit (ID, version, TPR), writes (TPR, LVT timer, initial count: APIC-write exits under vtx), and
; reads it does not virtualize (the timer's current count, PPR: APIC-access exits). Then WRMSR
; 0x1B moves the page to 0xfed00000, where the same APIC answers (the TPR written before), and
; back. Each check prints a line; the run exits 0 when all pass.

bits 16
org 0x7c00

KERNEL_CS   equ 0x08
KERNEL_DS   equ 0x10
IDT_BASE    equ 0x1000
APIC        equ 0xfee00000
MOVED       equ 0xfed00000
IA32_APIC_BASE equ 0x1b

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

    mov esi, msg_id
    call puts
    cmp dword [APIC + 0x20], 0
    call check
    mov esi, msg_version
    call puts
    cmp dword [APIC + 0x30], 0x00050014
    call check

    mov dword [APIC + 0x80], 0x20           ; TPR
    mov dword [APIC + 0x320], 0x10030       ; LVT timer: masked, one-shot, vector 0x30
    mov dword [APIC + 0x380], 0x100000      ; initial count
    mov esi, msg_tpr
    call puts
    cmp dword [APIC + 0x80], 0x20
    call check
    mov esi, msg_ppr
    call puts
    cmp dword [APIC + 0xa0], 0x20
    call check
    mov esi, msg_count
    call puts
    mov eax, [APIC + 0x390]                 ; current count: counting down from the initial
    test eax, eax
    jz .count_done
    cmp eax, 0x100000
    ja .count_done
    xor eax, eax
.count_done:
    call check

    mov ecx, IA32_APIC_BASE
    rdmsr
    mov esi, msg_base
    call puts
    cmp eax, APIC | 0x900                   ; the BSP flag and the global enable
    call check
    mov eax, MOVED | 0x900
    xor edx, edx
    wrmsr
    mov esi, msg_moved
    call puts
    rdmsr
    cmp eax, MOVED | 0x900
    call check
    mov esi, msg_moved_tpr
    call puts
    cmp dword [MOVED + 0x80], 0x20
    call check
    mov dword [MOVED + 0x80], 0x30
    mov eax, APIC | 0x900
    xor edx, edx
    wrmsr
    mov esi, msg_back
    call puts
    cmp dword [APIC + 0x80], 0x30
    call check
    jmp finish

msg_id:         db "APIC ID reads 0", 0
msg_version:    db "version reads 0x00050014", 0
msg_tpr:        db "TPR reads back 0x20", 0
msg_ppr:        db "PPR follows the TPR", 0
msg_count:      db "current count runs below the initial count", 0
msg_base:       db "IA32_APIC_BASE reads 0xfee00900", 0
msg_moved:      db "IA32_APIC_BASE moves to 0xfed00900", 0
msg_moved_tpr:  db "the moved page shows the same TPR", 0
msg_back:       db "moved back, the page shows the TPR written at 0xfed00000", 0

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
