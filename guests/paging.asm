; paging: identity-maps the kernel, enables paging and serves page faults by demand paging
;
; In 32-bit protected mode it builds a page directory and one page table that identity-map the
; first 4 MiB (kernel, stacks, page-table pages and the page pool), loads CR3 and sets CR0.PG.
; The #PF handler reads CR2 and the error code, and maps a fresh zeroed physical page from a pool
; at 0x300000 for any missing page in the window 0x40000000-0x403fffff (allocating that window's
; page table first if the directory entry is empty). Then it checks and prints:
;   - writes to 0x40000000, 0x40001000, 0x40002000 each take exactly one #PF with error code 0x2
;     (write, page not present, supervisor) and CR2 = the address; the value reads back,
;   - a second write to each of those pages takes no fault,
;   - the physical page behind 0x40000000 holds the value when read through the identity map,
;   - a read of the untouched page 0x40003000 takes one #PF with error code 0x0 and reads zero,
;   - after clearing the PTE of 0x40001000 and INVLPG, the next read of 0x40001000 takes a new
;     #PF (so INVLPG flushed the stale translation) and sees the fresh, zeroed page.
; The guest kernel runs at ring 1 under the trap engine; ring 1 is a supervisor level for paging
; (U/S = 0 in the error code), so the error codes are the same as on bare hardware.
; Exit status 0 if every check passed, 1 if one failed, 3 on an unexpected exception.

bits 16
org 0x7c00

KERNEL_CS   equ 0x08
KERNEL_DS   equ 0x10
IDT_BASE    equ 0x1000
STACK_TOP   equ 0x90000
PAGE_DIR    equ 0x20000         ; 4 KiB aligned
PAGE_TABLE0 equ 0x21000         ; maps 0x00000000-0x003fffff 1:1
POOL_START  equ 0x300000        ; physical pages handed out by the #PF handler (identity-mapped)
PTE_P       equ 1               ; present
PTE_RW      equ 2               ; writable
WINDOW      equ 0x40000000      ; the demand-paged 4 MiB window (directory entry 0x100)
PAGE        equ 0x1000

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
    cld
    call serial_init
    call idt_init
    mov eax, 14
    mov ebx, page_fault
    mov cl, 0x8e
    call set_gate
    mov esi, msg_title
    call puts

    ; --- page directory: entry 0 -> the identity page table, everything else not present -------
    mov edi, PAGE_DIR
    xor eax, eax
    mov ecx, 1024
    rep stosd
    mov dword [PAGE_DIR], PAGE_TABLE0 | PTE_RW | PTE_P
    mov edi, PAGE_TABLE0        ; PTE i -> physical page i
    mov eax, PTE_RW | PTE_P
    mov ecx, 1024
.identity:
    stosd
    add eax, PAGE
    loop .identity

    mov eax, PAGE_DIR
    mov cr3, eax
    mov eax, cr0
    or eax, 0x80000000          ; CR0.PG
    mov cr0, eax
    jmp .paging_on              ; (a jump right after enabling paging, as the SDM recommends)
.paging_on:
    mov esi, msg_paging
    call puts
    mov eax, cr0
    shr eax, 31
    call put_dec
    mov esi, msg_cr3
    call puts
    mov eax, cr3
    mov ecx, 8
    call put_hex
    cmp eax, PAGE_DIR
    jne .paging_checked
    mov eax, cr0
    test eax, 0x80000000
    setz al                     ; ZF = 1 when PG is set
    test al, al
.paging_checked:
    call check

    ; --- demand paging: one #PF per new page ----------------------------------------------------
    mov edi, WINDOW
    mov ebx, 0x11111111
    call demand_write
    mov edi, WINDOW + PAGE
    mov ebx, 0x22222222
    call demand_write
    mov edi, WINDOW + 2 * PAGE
    mov ebx, 0x33333333
    call demand_write

    mov esi, msg_again
    call puts
    mov edx, [faults]
    mov dword [WINDOW + 4], 1
    mov dword [WINDOW + PAGE + 4], 2
    mov dword [WINDOW + 2 * PAGE + 4], 3
    mov eax, [faults]
    sub eax, edx
    call put_dec
    mov esi, msg_faults
    call puts
    cmp eax, 0
    call check

    ; --- the page behind 0x40000000, seen through the identity map ----------------------------
    ; The pool hands out the window's page table first (0x300000), then the data pages.
    mov esi, msg_alias
    call puts
    mov eax, POOL_START + PAGE
    mov ecx, 8
    call put_hex
    mov esi, msg_alias2
    call puts
    mov eax, [POOL_START + PAGE]
    mov ecx, 8
    call put_hex
    cmp eax, 0x11111111
    call check

    ; --- a read of an untouched page ----------------------------------------------------------
    mov esi, msg_read
    call puts
    mov edx, [faults]
    mov eax, [WINDOW + 3 * PAGE]
    push eax
    mov eax, [faults]
    sub eax, edx
    call put_dec
    mov esi, msg_error
    call puts
    mov eax, [last_error]
    mov ecx, 1
    call put_hex
    mov esi, msg_value
    call puts
    pop eax
    mov ecx, 8
    call put_hex
    test eax, eax
    jnz .read_checked
    mov eax, [faults]
    sub eax, edx
    cmp eax, 1
    jne .read_checked
    cmp dword [last_error], 0
.read_checked:
    call check

    ; --- unmap 0x40001000, INVLPG, touch it again ---------------------------------------------
    mov esi, msg_invlpg
    call puts
    mov ebx, [PAGE_DIR + (WINDOW >> 22) * 4]
    and ebx, ~0xfff             ; the window's page table (identity-mapped)
    mov dword [ebx + 1 * 4], 0  ; PTE of 0x40001000: not present
    invlpg [WINDOW + PAGE]
    mov edx, [faults]
    mov eax, [WINDOW + PAGE]
    push eax
    mov eax, [faults]
    sub eax, edx
    call put_dec
    mov esi, msg_error
    call puts
    mov eax, [last_error]
    mov ecx, 1
    call put_hex
    mov esi, msg_cr2
    call puts
    mov eax, [last_cr2]
    mov ecx, 8
    call put_hex
    mov esi, msg_value
    call puts
    pop eax
    mov ecx, 8
    call put_hex
    test eax, eax               ; a fresh page: the old 0x22222222 is gone
    jnz .invlpg_checked
    mov eax, [faults]
    sub eax, edx
    cmp eax, 1
    jne .invlpg_checked
    cmp dword [last_cr2], WINDOW + PAGE
    jne .invlpg_checked
    cmp dword [last_error], 0
.invlpg_checked:
    call check

    mov esi, msg_total
    call puts
    mov eax, [faults]
    call put_dec
    mov esi, msg_total2
    call puts
    mov eax, [next_free]
    sub eax, POOL_START
    shr eax, 12
    call put_dec
    mov esi, msg_total3
    call puts
    jmp finish

; EDI = a virtual address in the window, EBX = a value: write it, read it back and report
; "0x40000000: write 0x11111111 -> 1 #PF (error code 0x2, CR2 0x40000000), read back 0x11111111".
demand_write:
    mov edx, [faults]
    mov [edi], ebx              ; #PF here: the handler maps a page, the MOV is restarted
    mov eax, edi
    mov ecx, 8
    call put_hex
    mov esi, msg_write
    call puts
    mov eax, ebx
    call put_hex
    mov esi, msg_arrow
    call puts
    mov eax, [faults]
    sub eax, edx
    call put_dec
    mov esi, msg_error
    call puts
    mov eax, [last_error]
    mov ecx, 1
    call put_hex
    mov esi, msg_cr2
    call puts
    mov eax, [last_cr2]
    mov ecx, 8
    call put_hex
    mov esi, msg_readback
    call puts
    mov eax, [edi]
    call put_hex
    cmp eax, ebx
    jne .checked
    mov eax, [faults]
    sub eax, edx
    cmp eax, 1
    jne .checked
    cmp dword [last_error], PTE_RW  ; 0x2: write to a not-present page, supervisor
    jne .checked
    cmp [last_cr2], edi
.checked:
    call check
    ret

; ----- #PF: demand paging ------------------------------------------------------------------
page_fault:                     ; stack: error code, EIP, CS, EFLAGS
    pushad
    inc dword [faults]
    mov eax, [esp + 32]
    mov [last_error], eax
    mov eax, cr2
    mov [last_cr2], eax
    mov edx, eax
    shr edx, 22
    cmp edx, WINDOW >> 22
    jne .outside
    lea edi, [PAGE_DIR + edx * 4]
    test dword [edi], PTE_P
    jnz .have_table
    call alloc_page             ; the window's page table
    or eax, PTE_RW | PTE_P
    mov [edi], eax
.have_table:
    mov edi, [edi]
    and edi, ~0xfff
    mov edx, [last_cr2]
    shr edx, 12
    and edx, 0x3ff
    lea edi, [edi + edx * 4]
    call alloc_page             ; the data page
    or eax, PTE_RW | PTE_P
    mov [edi], eax
    popad
    add esp, 4                  ; the error code
    iretd                       ; restart the faulting instruction
.outside:
    mov esi, msg_outside
    call puts
    mov ecx, 8
    call put_hex
    mov al, 10
    call putc
    mov al, 3
    jmp exit

alloc_page:                     ; -> EAX = a zeroed physical page (identity-mapped)
    push ecx
    push edi
    mov eax, [next_free]
    add dword [next_free], PAGE
    mov edi, eax
    push eax
    xor eax, eax
    mov ecx, PAGE / 4
    rep stosd
    pop eax
    pop edi
    pop ecx
    ret

%include "lib.inc"

faults:         dd 0
last_error:     dd -1
last_cr2:       dd 0
next_free:      dd POOL_START

align 8
gdt:
    dq 0                        ; 0x00: null
    dw 0xffff, 0x0000           ; 0x08: flat code, DPL 0
    db 0x00, 0x9a, 0xcf, 0x00
    dw 0xffff, 0x0000           ; 0x10: flat data, DPL 0
    db 0x00, 0x92, 0xcf, 0x00
gdt_end:

gdt_descriptor:
    dw gdt_end - gdt - 1
    dd gdt

msg_title:    db "paging: identity-mapped kernel, demand paging in the #PF handler, INVLPG", 10, 0
msg_paging:   db "paging on: CR0.PG = ", 0
msg_cr3:      db ", CR3 = ", 0
msg_write:    db ": write ", 0
msg_arrow:    db " -> ", 0
msg_faults:   db " #PF", 0
msg_error:    db " #PF (error code ", 0
msg_cr2:      db ", CR2 ", 0
msg_readback: db "), read back ", 0
msg_again:    db "second write to each of the 3 pages -> ", 0
msg_alias:    db "0x40000000 is backed by physical ", 0
msg_alias2:   db ", which reads ", 0
msg_read:     db "read of untouched 0x40003000 -> ", 0
msg_value:    db "), value ", 0
msg_invlpg:   db "PTE of 0x40001000 cleared + INVLPG, read again -> ", 0
msg_total:    db "page faults: ", 0
msg_total2:   db ", pool pages used: ", 0
msg_total3:   db 10, 0
msg_outside:  db "page fault outside the demand-paged window at ", 0
