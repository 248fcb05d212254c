; The fixed part of every structured fuzz case: boot to 32-bit protected mode, install an IDT whose
; handlers record each event and resume the case after the op that raised it, and the routines the
; generated body calls. The body (fuzz/program.py) is assembled separately at BODY.
;
; Everything the case observes leaves on the 0xE9 console as binary records, the moment it is
; made, so a run that ends early still shows how far it got (fuzz/records.py parses them); with
; `log_mode` set (the fuzzer's campaigns do) each byte goes instead to RECORD_LOG in RAM, its count
; to LOG_LENGTH, where fuzz/worker.py reads them after the run however it ended: the same bytes
; without an I/O exit apiece.
;   'C' op  eax ecx edx ebx esp ebp esi edi  eflags  ds es fs gs  sum  cr0 cr4   after each op
;   'X' op  vector  three dwords from the top of the event's frame             each event
;   'F'     cr0 cr3 cr4                                                       at the end
; The routines address memory only through SS (kept flat by the generator), so whatever the ops
; leave in DS/ES/FS/GS, and their own instructions are not sensitive except the checkpoint's
; PUSHFD/POPFD, whose IF and IOPL bits are masked out of the record.

bits 16
org 0x7c00

KERNEL_CS    equ 0x08
KERNEL_DS    equ 0x10
USER_CS      equ 0x18
USER_DS      equ 0x20
TSS_SEL      equ 0x28
IDT_BASE     equ 0x1000
SCRATCH      equ 0x3000          ; 256 bytes the ops write and the checkpoint sums
PAGE_DIR     equ 0x4000          ; identity map of the first 4 MiB for the paging ops
PAGE_TABLE   equ 0x5000
REC_BUF      equ 0x6000
CURRENT_OP   equ 0x6100
RECOVERY     equ 0x6104
RECOVERY_ESP equ 0x6108
EVENTS       equ 0x610c
LOG_LENGTH   equ 0x6110          ; bytes in RECORD_LOG so far
RECORD_LOG   equ 0x200000        ; above anything a case writes, inside the identity map
BODY         equ 0xa000
STACK_TOP    equ 0x90000
KERNEL_STACK equ 0x8f000         ; TSS.ESP0: events from ring 3 arrive here
MAX_EVENTS   equ 200
CONSOLE      equ 0xe9
DEBUG_EXIT   equ 0xf4

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
    mov fs, ax
    mov gs, ax
    mov ss, ax
    mov esp, STACK_TOP
    xor eax, eax
    mov [EVENTS], eax
    mov [LOG_LENGTH], eax
    mov [CURRENT_OP], eax
    mov edi, SCRATCH
    mov ecx, 64
.clear_scratch:
    mov [edi], eax
    add edi, 4
    loop .clear_scratch
    call build_idt
    call build_page_tables
    mov ax, TSS_SEL
    ltr ax
    jmp BODY

build_idt:                      ; gate N -> stub N (interrupt gates; a few trap gates, one absent)
    xor eax, eax
.gate:
    lea edi, [IDT_BASE + eax * 8]
    mov ebx, eax
    shl ebx, 4
    add ebx, stubs
    mov [edi], bx
    mov word [edi + 2], KERNEL_CS
    mov byte [edi + 4], 0
    mov byte [edi + 5], 0x8e
    shr ebx, 16
    mov [edi + 6], bx
    inc eax
    cmp eax, 256
    jb .gate
    mov byte [IDT_BASE + 0x80 * 8 + 5], 0xee    ; INT 0x80 is allowed from ring 3
    mov byte [IDT_BASE + 0x40 * 8 + 5], 0x8f    ; 0x40..0x43: trap gates (IF stays as it was)
    mov byte [IDT_BASE + 0x41 * 8 + 5], 0x8f
    mov byte [IDT_BASE + 0x42 * 8 + 5], 0x8f
    mov byte [IDT_BASE + 0x43 * 8 + 5], 0x8f
    mov byte [IDT_BASE + 0x44 * 8 + 5], 0x0e    ; 0x44: not present (#NP)
    lidt [idt_descriptor]
    ret

build_page_tables:              ; PDE 0 -> PAGE_TABLE, which maps 0..4 MiB onto itself
    mov dword [PAGE_DIR], PAGE_TABLE | 7
    mov edi, PAGE_DIR + 4
    xor eax, eax
    mov ecx, 1023
.pde:
    mov [edi], eax
    add edi, 4
    loop .pde
    mov edi, PAGE_TABLE
    mov eax, 7
    mov ecx, 1024
.pte:
    mov [edi], eax
    add eax, 0x1000
    add edi, 4
    loop .pte
    ret

; ----- what the body calls --------------------------------------------------------------------
checkpoint:                     ; after each op: registers, flags, data segments, scratch sum, CRs
    pushfd
    pushad                      ; edi esi ebp esp ebx edx ecx eax at [esp + 0 .. 28]
    mov byte [ss:REC_BUF], 'C'
    mov eax, [ss:CURRENT_OP]
    mov [ss:REC_BUF + 1], al
    mov eax, [esp + 28]
    mov [ss:REC_BUF + 2], eax
    mov eax, [esp + 24]
    mov [ss:REC_BUF + 6], eax
    mov eax, [esp + 20]
    mov [ss:REC_BUF + 10], eax
    mov eax, [esp + 16]
    mov [ss:REC_BUF + 14], eax
    mov eax, [esp + 12]
    add eax, 8                  ; ESP as the op left it (before CALL and PUSHFD)
    mov [ss:REC_BUF + 18], eax
    mov eax, [esp + 8]
    mov [ss:REC_BUF + 22], eax
    mov eax, [esp + 4]
    mov [ss:REC_BUF + 26], eax
    mov eax, [esp]
    mov [ss:REC_BUF + 30], eax
    mov eax, [esp + 32]
    and eax, 0xffffcdff         ; IF and IOPL: trap's PUSHFD cannot show them (the ops can)
    mov [ss:REC_BUF + 34], eax
    mov ax, ds
    mov [ss:REC_BUF + 38], ax
    mov ax, es
    mov [ss:REC_BUF + 40], ax
    mov ax, fs
    mov [ss:REC_BUF + 42], ax
    mov ax, gs
    mov [ss:REC_BUF + 44], ax
    xor eax, eax
    mov esi, SCRATCH
    mov ecx, 64
.sum:
    rol eax, 5
    xor eax, [ss:esi]
    add esi, 4
    loop .sum
    mov [ss:REC_BUF + 46], eax
    mov eax, cr0
    mov [ss:REC_BUF + 50], eax
    mov eax, cr4
    mov [ss:REC_BUF + 54], eax
    mov ecx, 58
    call emit
    popad
    popfd
    ret

emit:                           ; send ECX bytes from REC_BUF to the console (or the log)
    mov esi, REC_BUF
    cmp byte [ss:log_mode], 0
    jne .log
.byte:
    mov al, [ss:esi]
    out CONSOLE, al
    inc esi
    loop .byte
    ret
.log:                           ; the same registers as the console's loop leaves, EDI kept
    push edi
    mov edi, [ss:LOG_LENGTH]
.copy:
    mov al, [ss:esi]
    mov [ss:RECORD_LOG + edi], al
    inc esi
    inc edi
    mov [ss:LOG_LENGTH], edi
    loop .copy
    pop edi
    ret

event:                          ; [esp] = vector, then the frame the CPU pushed
    mov byte [ss:REC_BUF], 'X'
    mov eax, [ss:CURRENT_OP]
    mov [ss:REC_BUF + 1], al
    mov eax, [esp]
    mov [ss:REC_BUF + 2], al
    mov eax, [esp + 4]
    mov [ss:REC_BUF + 3], eax
    mov eax, [esp + 8]
    mov [ss:REC_BUF + 7], eax
    mov eax, [esp + 12]
    mov [ss:REC_BUF + 11], eax
    mov ecx, 15
    call emit
    inc dword [ss:EVENTS]
    cmp dword [ss:EVENTS], MAX_EVENTS
    jae finish
    mov esp, [ss:RECOVERY_ESP]  ; resume after the op, on the stack it started with
    jmp [ss:RECOVERY]

finish:                         ; the control registers, then exit with status 0
    mov byte [ss:REC_BUF], 'F'
    mov eax, cr0
    mov [ss:REC_BUF + 1], eax
    mov eax, cr3
    mov [ss:REC_BUF + 5], eax
    mov eax, cr4
    mov [ss:REC_BUF + 9], eax
    mov ecx, 13
    call emit
    xor al, al
    out DEBUG_EXIT, al
.stuck:
    hlt
    jmp .stuck

align 16
stubs:                          ; stub N at stubs + 16 * N: push N, go to `event`
%include "stubs.inc"

align 8
gdt:
    dq 0
    dq 0x00cf9a000000ffff       ; 0x08 ring-0 code, flat
    dq 0x00cf92000000ffff       ; 0x10 ring-0 data, flat
    dq 0x00cffa000000ffff       ; 0x18 ring-3 code, flat
    dq 0x00cff2000000ffff       ; 0x20 ring-3 data, flat
    dw 0x67, tss, 0x8900, 0x0000            ; 0x28 32-bit TSS, available
    dw ldt_end - ldt - 1, ldt, 0x8200, 0x0000   ; 0x30 LDT
    dq 0x00cf12000000ffff       ; 0x38 ring-0 data, not present
    dq 0x00cf9e000000ffff       ; 0x40 ring-0 code, conforming, flat
    dq 0x000f92010000ffff       ; 0x48 ring-0 data, base 0x10000, limit 0xffff bytes
    dq 0x000f9a000000ffff       ; 0x50 ring-0 code, 16-bit
    dw call_target, KERNEL_CS, 0x8c00, 0x0000   ; 0x58 32-bit call gate -> call_target, DPL 0
    dq 0x00cfb2000000ffff       ; 0x60 ring-1 data, flat
    dq 0x00cfba000000ffff       ; 0x68 ring-1 code, flat
    dq 0x00cf90000000ffff       ; 0x70 ring-0 data, read-only
    dq 0x00cf98000000ffff       ; 0x78 ring-0 code, execute-only
gdt_end:
gdt_descriptor:
    dw gdt_end - gdt - 1
    dd gdt
idt_descriptor:
    dw 256 * 8 - 1
    dd IDT_BASE
align 8
ldt:
    dq 0x00cf92000000ffff       ; LDT 0 (0x04): ring-0 data, flat
    dq 0x00cf9a000000ffff       ; LDT 1 (0x0c): ring-0 code, flat
ldt_end:
align 4
tss:
    dd 0
    dd KERNEL_STACK             ; ESP0
    dd KERNEL_DS                ; SS0
    times 0x68 - 12 db 0

call_target:                    ; where the call gate leads: straight back to the caller
    retf

log_mode:                       ; 1: records go to RECORD_LOG (fuzz/program.py sets it)
    db 0
