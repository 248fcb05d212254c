; nano-pgfault: Adams & Agesen's "pgfault" nanobenchmark: a #PF whose handler maps the page, N times
;
; In the guest kernel (32-bit protected mode, ring 0, paging on with the first 4 MiB identity-
; mapped) the page TEST_PAGE starts not present. Each of ITERATIONS iterations reads it: the read
; raises #PF, the handler (an interrupt gate) reads CR2, maps the page at that address (writes
; its PTE present) and returns with IRETD, and the read is restarted and completes; then the loop
; unmaps the page again (clears the PTE and INVLPGs it) so that the next read faults too. Then it
; prints "nano-pgfault: N iterations, N page faults" (faults the handler saw at TEST_PAGE) and
; exits with status 0, or with status 1 if the count is off. Under the trap engine an iteration is
; four exits: the #PF (reflected through the guest's IDT), MOV from CR2, the handler's IRETD to
; guest ring 0 (real ring 1) and the INVLPG; the PTE stores do not exit (the guest's own page
; tables are used). Set-up: nano.inc.

ITERATIONS  equ 2000
TEST_PAGE   equ 0x200000        ; inside the identity map
TEST_PTE    equ PAGE_TABLE0 + (TEST_PAGE >> 12) * 4

%include "nano.inc"

bench:
    mov eax, 14                 ; #PF
    mov ebx, page_fault
    mov cl, 0x8e
    call set_gate
    call paging_on
    mov dword [TEST_PTE], 0     ; TEST_PAGE: not present
    invlpg [TEST_PAGE]
    mov ecx, ITERATIONS
.next:                          ; the measured loop
    mov eax, [TEST_PAGE]        ; #PF; the handler maps the page, the read is restarted
    mov dword [TEST_PTE], 0     ; unmap it again
    invlpg [TEST_PAGE]
    dec ecx
    jnz .next

    mov esi, bench_name
    call report
    mov esi, msg_count
    call puts
    mov eax, [faults]
    call put_dec
    mov esi, msg_faults
    cmp dword [faults], ITERATIONS
    jne report_fail
    jmp report_end

page_fault:                     ; stack: error code, EIP, CS, EFLAGS
    push eax
    mov eax, cr2
    cmp eax, TEST_PAGE
    jne .other                  ; not the test page: leave it unmapped, lib.inc reports #PF
    mov dword [TEST_PTE], TEST_PAGE | PTE_RW | PTE_P
    mov eax, [faults]           ; count it (restartable stores: see nano.inc)
    inc eax
    mov [faults], eax
    pop eax
    add esp, 4                  ; the error code
    iretd                       ; restart the faulting read
.other:
    pop eax
    jmp exc14

faults:     dd 0
bench_name: db "nano-pgfault", 0
msg_count:  db ", ", 0
msg_faults: db " page faults", 0
