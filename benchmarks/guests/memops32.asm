; memops32: guest loads against guest stores, on a data page and on the code's own page
;
; Boots into flat 32-bit protected mode like compute32, then runs `iterations` passes of one
; loop chosen by `variant`, each pass 8 dword accesses unrolled (then DEC ECX / JNZ):
;   0  empty            the loop alone
;   1  load, data page  MOV EAX, [ESI+k] from a buffer at 1 MiB (no code on its page)
;   2  store, data page MOV [ESI+k], EAX to the same buffer
;   3  load, code page  the same loads from `near_code`, a buffer on this loop's own 4 KiB page
;   4  store, code page the same stores to `near_code` (Unicorn tracks pages that hold
;                       translated code so it can catch self-modifying code)
; The benchmark patches the dwords after "BNCH" and reads ns per access from the difference to
; variant 0. Exits with status 0.

bits 16
org 0x7c00

KERNEL_CS   equ 0x08
KERNEL_DS   equ 0x10
STACK_TOP   equ 0x90000
DATA_PAGE   equ 0x100000
DEBUG_EXIT  equ 0xf4

start:
    jmp main

align 4
params:
    db "BNCH"
iterations: dd 100000
variant:    dd 4
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
    mov ecx, [iterations]
    mov eax, [variant]
    mov esi, DATA_PAGE
    cmp eax, 3
    jb .page_chosen
    mov esi, near_code
.page_chosen:
    test eax, eax
    jz empty_loop
    test eax, 1
    jnz load_loop

store_loop:
    mov [esi], eax
    mov [esi + 4], eax
    mov [esi + 8], eax
    mov [esi + 12], eax
    mov [esi + 16], eax
    mov [esi + 20], eax
    mov [esi + 24], eax
    mov [esi + 28], eax
    dec ecx
    jnz store_loop
    jmp done

load_loop:
    mov eax, [esi]
    mov eax, [esi + 4]
    mov eax, [esi + 8]
    mov eax, [esi + 12]
    mov eax, [esi + 16]
    mov eax, [esi + 20]
    mov eax, [esi + 24]
    mov eax, [esi + 28]
    dec ecx
    jnz load_loop
    jmp done

empty_loop:
    dec ecx
    jnz empty_loop

done:
    xor al, al
    out DEBUG_EXIT, al
    hlt

align 64
near_code:                      ; on the same 4 KiB page as the loops above
    times 32 db 0

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
