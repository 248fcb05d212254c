; mmu: what the MMU does with 32-bit paging, checked against the SDM (Vol. 3, 4.6-4.10)
;
; A kernel with a TSS, ring-3 code/data segments and identity-mapped low memory (U/S = 1 there)
; sets up a window at 0x50000000 whose PTEs each exercise one rule, then probes it from ring 0
; and from ring 3. A probe sets a resume point; the #PF handler records the error code and CR2,
; counts the fault and continues at the resume point on the kernel stack (from either ring);
; a ring-3 probe returns through INT 0x80. Checks, each printed with what was seen:
;   - not present: supervisor read 0x0, supervisor write 0x2, user read 0x4, user write 0x6,
;     supervisor fetch (CALL into the page) 0x0 with CR2 = the target (no I/D bit: no PAE/SMEP),
;   - protection: user read of a supervisor page 0x5, user write to a read-only page 0x7,
;     supervisor write to a read-only page: allowed while CR0.WP = 0, 0x3 once WP = 1,
;   - accessed/dirty: a read sets A and not D in the PTE, a write then sets D; the PDE gets A,
;   - a 4 MiB page (CR4.PSE) at 0x80000000 over physical 0x400000, seen through the identity map,
;     with A and D set in the PDE,
;   - a PTE edited to another frame and INVLPG: the next read sees the new frame,
;   - two page directories mapping 0x50004000 to different frames: MOV CR3 switches what a
;     read sees, and back.
; CR2 always carries the full faulting address (page offsets are nonzero).
; Exit status 0 if every check passed, 1 if one failed, 3 on an unexpected exception.

bits 16
org 0x7c00

KERNEL_CS   equ 0x08
KERNEL_DS   equ 0x10
USER_CS     equ 0x18 | 3
USER_DS     equ 0x20 | 3
TSS_SEL     equ 0x28
IDT_BASE    equ 0x1000
KSTACK_TOP  equ 0x90000
ESP0_TOP    equ 0x70000         ; TSS.ESP0: events from ring 3 (apart from the kernel's stack)
USTACK_TOP  equ 0x80000
PD_A        equ 0x20000
PD_B        equ 0x21000
IDENTITY    equ 0x22000         ; maps 0-4 MiB 1:1, P|RW|US
TABLE_A     equ 0x23000         ; the window's table under PD_A
TABLE_B     equ 0x24000         ; ... under PD_B
FRAME1      equ 0x30000
FRAME2      equ 0x31000
FRAME3      equ 0x32000
WINDOW      equ 0x50000000
BIG         equ 0x80000000      ; a 4 MiB page over physical BIG_FRAME
BIG_FRAME   equ 0x400000
P           equ 1
RW          equ 2
US          equ 4
ACCESSED    equ 0x20
DIRTY       equ 0x40
PS          equ 0x80

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
    mov esp, KSTACK_TOP
    mov ax, USER_DS
    mov ds, ax
    mov es, ax
    mov fs, ax
    mov gs, ax
    cld
    call serial_init
    call idt_init
    mov eax, 14
    mov ebx, page_fault
    mov cl, 0x8e
    call set_gate
    mov eax, 0x80
    mov ebx, back_to_kernel
    mov cl, 0xee
    call set_gate
    mov eax, tss
    mov [gdt + TSS_SEL + 2], ax
    shr eax, 16
    mov [gdt + TSS_SEL + 4], al
    mov [gdt + TSS_SEL + 7], ah
    mov dword [tss + 4], ESP0_TOP
    mov dword [tss + 8], KERNEL_DS
    mov ax, TSS_SEL
    ltr ax
    mov esi, msg_title
    call puts

    ; --- tables ----------------------------------------------------------------------------
    mov edi, PD_A               ; both directories, the identity table and the window tables
    xor eax, eax
    mov ecx, 5 * 1024
    rep stosd
    mov edi, IDENTITY
    mov eax, P | RW | US
    mov ecx, 1024
.identity:
    stosd
    add eax, 0x1000
    loop .identity
    mov dword [PD_A], IDENTITY | P | RW | US
    mov dword [PD_B], IDENTITY | P | RW | US
    mov dword [PD_A + (WINDOW >> 22) * 4], TABLE_A | P | RW | US
    mov dword [PD_B + (WINDOW >> 22) * 4], TABLE_B | P | RW | US
    mov dword [PD_A + (BIG >> 22) * 4], BIG_FRAME | P | RW | PS
    mov dword [PD_A + 4], BIG_FRAME | P | RW | PS              ; 4-8 MiB 1:1, one 4 MiB page
    ; window page 0: not present
    mov dword [TABLE_A + 1 * 4], FRAME1 | P | RW            ; supervisor only
    mov dword [TABLE_A + 2 * 4], FRAME1 | P | US            ; read-only, user
    mov dword [TABLE_A + 3 * 4], FRAME3 | P | RW | US       ; A/D probe
    mov dword [TABLE_A + 4 * 4], FRAME1 | P | RW | US       ; INVLPG and CR3 probe
    mov dword [TABLE_B + 4 * 4], FRAME2 | P | RW | US
    mov dword [FRAME1 + 0x10], 0x11111111
    mov dword [FRAME2 + 0x10], 0x22222222
    mov eax, cr4
    or eax, 0x10                ; CR4.PSE
    mov cr4, eax
    mov eax, PD_A
    mov cr3, eax
    mov eax, cr0
    or eax, 0x80000000
    mov cr0, eax
    jmp .paging_on
.paging_on:

    ; --- not present -------------------------------------------------------------------------
    mov esi, msg_np_read
    mov ebx, WINDOW + 0x123
    mov edx, 0x0
    call kernel_read
    mov esi, msg_np_write
    mov ebx, WINDOW + 0x456
    mov edx, 0x2
    call kernel_write
    mov esi, msg_np_uread
    mov ebx, WINDOW + 0x789
    mov edx, 0x4
    call user_probe_read
    mov esi, msg_np_uwrite
    mov ebx, WINDOW + 0xabc
    mov edx, 0x6
    call user_probe_write
    mov esi, msg_np_fetch
    mov ebx, WINDOW + 0x10
    mov edx, 0x0
    call kernel_fetch

    ; --- protection ----------------------------------------------------------------------------
    mov esi, msg_us_read
    mov ebx, WINDOW + 0x1010
    mov edx, 0x5
    call user_probe_read
    mov esi, msg_ro_uwrite
    mov ebx, WINDOW + 0x2010
    mov edx, 0x7
    call user_probe_write
    mov esi, msg_ro_kwrite
    call puts
    mov dword [resume], .ro_done
    mov [kstack], esp
    mov edx, [faults]
    mov dword [WINDOW + 0x2014], 0x5a5a5a5a     ; CR0.WP = 0: a supervisor store may
    mov eax, [faults]
    sub eax, edx
    call put_dec
    mov esi, msg_faults_value
    call puts
    mov eax, [FRAME1 + 0x14]
    mov ecx, 8
    call put_hex
    cmp eax, 0x5a5a5a5a
    jne .ro_checked
    cmp dword [faults], edx
.ro_checked:
    call check
.ro_done:
    mov eax, cr0
    or eax, 0x10000             ; CR0.WP
    mov cr0, eax
    mov esi, msg_wp_kwrite
    mov ebx, WINDOW + 0x2018
    mov edx, 0x3
    call kernel_write

    ; --- accessed and dirty --------------------------------------------------------------------
    and dword [TABLE_A + 3 * 4], ~(ACCESSED | DIRTY)
    and dword [PD_A + (WINDOW >> 22) * 4], ~(ACCESSED | DIRTY)
    invlpg [WINDOW + 0x3000]
    mov esi, msg_ad_read
    call puts
    mov eax, [WINDOW + 0x3010]
    mov eax, [TABLE_A + 3 * 4]
    and eax, ACCESSED | DIRTY
    mov ecx, 2
    call put_hex
    cmp eax, ACCESSED
    call check
    mov esi, msg_ad_write
    call puts
    mov dword [WINDOW + 0x3010], 1
    mov eax, [TABLE_A + 3 * 4]
    and eax, ACCESSED | DIRTY
    mov ecx, 2
    call put_hex
    mov ebx, eax
    mov esi, msg_ad_pde
    call puts
    mov eax, [PD_A + (WINDOW >> 22) * 4]
    and eax, ACCESSED | DIRTY
    mov ecx, 2
    call put_hex
    cmp eax, ACCESSED
    jne .ad_checked
    cmp ebx, ACCESSED | DIRTY
.ad_checked:
    call check

    ; --- a 4 MiB page --------------------------------------------------------------------------
    mov esi, msg_big
    call puts
    mov dword [BIG + 0x123454], 0xb16b16
    mov eax, [BIG_FRAME + 0x123454]
    mov ecx, 8
    call put_hex
    mov ebx, eax
    mov esi, msg_big_pde
    call puts
    mov eax, [PD_A + (BIG >> 22) * 4]
    and eax, ACCESSED | DIRTY
    mov ecx, 2
    call put_hex
    cmp ebx, 0x00b16b16
    jne .big_checked
    cmp eax, ACCESSED | DIRTY
.big_checked:
    call check

    ; --- INVLPG after a PTE edit ---------------------------------------------------------------
    mov esi, msg_invlpg
    call puts
    mov eax, [WINDOW + 0x4010]
    mov ecx, 8
    call put_hex
    mov ebx, eax
    mov esi, msg_then
    call puts
    mov dword [TABLE_A + 4 * 4], FRAME2 | P | RW | US
    invlpg [WINDOW + 0x4000]
    mov eax, [WINDOW + 0x4010]
    mov ecx, 8
    call put_hex
    cmp ebx, 0x11111111
    jne .invlpg_checked
    cmp eax, 0x22222222
.invlpg_checked:
    call check
    mov dword [TABLE_A + 4 * 4], FRAME1 | P | RW | US
    invlpg [WINDOW + 0x4000]

    ; --- CR3 switches --------------------------------------------------------------------------
    mov esi, msg_cr3
    call puts
    mov eax, [WINDOW + 0x4010]
    mov ebx, eax
    mov ecx, 8
    call put_hex
    mov esi, msg_then
    call puts
    mov eax, PD_B
    mov cr3, eax
    mov eax, [WINDOW + 0x4010]
    mov edi, eax
    mov ecx, 8
    call put_hex
    mov esi, msg_then
    call puts
    mov eax, PD_A
    mov cr3, eax
    mov eax, [WINDOW + 0x4010]
    mov ecx, 8
    call put_hex
    cmp ebx, 0x11111111
    jne .cr3_checked
    cmp edi, 0x22222222
    jne .cr3_checked
    cmp eax, 0x11111111
.cr3_checked:
    call check

    mov esi, msg_total
    call puts
    mov eax, [faults]
    call put_dec
    mov al, 10
    call putc
    jmp finish

; ----- probes: ESI = label, EBX = address, EDX = the expected error code ----------------------
kernel_read:
    call puts
    mov dword [resume], expect_fault
    mov [kstack], esp
    mov eax, [ebx]
    jmp no_fault

kernel_write:
    call puts
    mov dword [resume], expect_fault
    mov [kstack], esp
    mov dword [ebx], 0x12345678
    jmp no_fault

kernel_fetch:
    call puts
    mov dword [resume], expect_fault
    mov [kstack], esp
    call ebx
    jmp no_fault

user_probe_read:
    mov edi, user_read
    jmp user_probe
user_probe_write:
    mov edi, user_write
user_probe:                     ; EDI = the ring-3 code
    call puts
    mov dword [resume], expect_fault_user
    mov [kstack], esp
    push USER_DS
    push USTACK_TOP
    push 0x2
    push USER_CS
    push edi
    iretd

user_read:
    mov eax, [ebx]
    int 0x80
user_write:
    mov dword [ebx], 0x12345678
    int 0x80

no_fault:                       ; the probe did not fault
    mov esi, msg_no_fault
    call puts
    mov eax, 1
    test eax, eax
    call check
    ret

expect_fault_user:              ; back from ring 3: through #PF or INT 0x80
    cmp dword [resume], 0
    jne no_fault
expect_fault:                   ; "error 0x2, CR2 0x50000456"
    push ebx
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
    pop ebx
    cmp [last_error], edx
    jne .checked
    cmp [last_cr2], ebx
.checked:
    call check
    ret

; ----- #PF: record, then continue at the resume point on the kernel stack --------------------
page_fault:
    pop dword [last_error]
    push eax
    mov eax, cr2
    mov [last_cr2], eax
    pop eax
    inc dword [faults]
    mov esp, [kstack]
    push dword [resume]
    mov dword [resume], 0
    ret

back_to_kernel:                 ; INT 0x80 from a ring-3 probe that did not fault
    mov esp, [kstack]
    push dword [resume]
    mov dword [resume], 1
    ret

%include "../../guests/lib.inc"

faults:         dd 0
last_error:     dd -1
last_cr2:       dd 0
resume:         dd 0
kstack:         dd 0

align 8
gdt:
    dq 0
    dw 0xffff, 0x0000           ; 0x08: ring-0 code, flat
    db 0x00, 0x9a, 0xcf, 0x00
    dw 0xffff, 0x0000           ; 0x10: ring-0 data, flat
    db 0x00, 0x92, 0xcf, 0x00
    dw 0xffff, 0x0000           ; 0x18: ring-3 code, flat
    db 0x00, 0xfa, 0xcf, 0x00
    dw 0xffff, 0x0000           ; 0x20: ring-3 data, flat
    db 0x00, 0xf2, 0xcf, 0x00
    dw 103, 0x0000              ; 0x28: 32-bit TSS
    db 0x00, 0x89, 0x00, 0x00
gdt_end:

gdt_descriptor:
    dw gdt_end - gdt - 1
    dd gdt

align 4
tss:
    times 25 dd 0
    dw 0
    dw 104

msg_title:        db "mmu: #PF error codes and CR2, U/S, R/W with WP, A/D bits, 4 MiB pages, INVLPG, CR3", 10, 0
msg_np_read:      db "not present, supervisor read: ", 0
msg_np_write:     db "not present, supervisor write: ", 0
msg_np_uread:     db "not present, user read: ", 0
msg_np_uwrite:    db "not present, user write: ", 0
msg_np_fetch:     db "not present, supervisor fetch: ", 0
msg_us_read:      db "supervisor page, user read: ", 0
msg_ro_uwrite:    db "read-only page, user write: ", 0
msg_ro_kwrite:    db "read-only page, supervisor write, WP=0: ", 0
msg_faults_value: db " #PF, stored ", 0
msg_wp_kwrite:    db "read-only page, supervisor write, WP=1: ", 0
msg_ad_read:      db "after a read, PTE A/D bits: ", 0
msg_ad_write:     db "after a write, PTE A/D bits: ", 0
msg_ad_pde:       db ", PDE: ", 0
msg_big:          db "4 MiB page: stored through 0x80123454, physical 0x523454 reads ", 0
msg_big_pde:      db ", PDE A/D bits: ", 0
msg_invlpg:       db "PTE edited + INVLPG: 0x50004010 reads ", 0
msg_cr3:          db "CR3 A, B, A: 0x50004010 reads ", 0
msg_then:         db " then ", 0
msg_no_fault:     db "no #PF", 0
msg_error:        db "error ", 0
msg_cr2:          db ", CR2 ", 0
msg_total:        db "page faults: ", 0
