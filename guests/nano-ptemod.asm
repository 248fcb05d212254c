; nano-ptemod: Adams & Agesen's "ptemod" nanobenchmark: a store to a live PTE, then INVLPG, N times
;
; In the guest kernel (32-bit protected mode, ring 0, paging on with the first 4 MiB identity-
; mapped) each of ITERATIONS iterations rewrites the PTE of TEST_PAGE so that it maps the other
; of two physical frames, A or B (one store of the new PTE, computed in EAX), and INVLPGs the
; page, as a kernel does when it changes a mapping that may be cached in the TLB.
; Afterwards it reads a marker through TEST_PAGE: with an even N the page maps frame A again, and
; it prints "nano-ptemod: N iterations, TEST_PAGE maps frame A" and exits with status 0 (status
; 1 if the marker read is neither A's nor B's, or not the one N predicts). Under the trap engine
; an iteration is one exit, the INVLPG: the guest's own page tables are used, so the PTE store
; itself is an ordinary memory write (a shadow-paging VMM would have to trace it). Set-up:
; nano.inc.

ITERATIONS  equ 40000
TEST_PAGE   equ 0x200000        ; inside the identity map
TEST_PTE    equ PAGE_TABLE0 + (TEST_PAGE >> 12) * 4
FRAME_A     equ 0x201000        ; the two frames TEST_PAGE is mapped to in turn
FRAME_B     equ 0x202000
MARKER_A    equ 0xaaaaaaaa
MARKER_B    equ 0xbbbbbbbb

%include "nano.inc"

bench:
    call paging_on
    mov dword [FRAME_A], MARKER_A       ; through the identity map
    mov dword [FRAME_B], MARKER_B
    mov eax, FRAME_A | PTE_RW | PTE_P
    mov [TEST_PTE], eax
    invlpg [TEST_PAGE]
    mov ecx, ITERATIONS
.next:                          ; the measured loop
    xor eax, FRAME_A ^ FRAME_B  ; the PTE for the other frame
    mov [TEST_PTE], eax
    invlpg [TEST_PAGE]
    dec ecx
    jnz .next

    mov esi, bench_name
    call report
    mov eax, [TEST_PAGE]
    mov esi, msg_frame_a
    mov ebx, MARKER_A
    test dword [iterations], 1
    jz .expected
    mov esi, msg_frame_b
    mov ebx, MARKER_B
.expected:
    cmp eax, ebx
    je report_end
    mov esi, msg_neither
    jmp report_fail

iterations: dd ITERATIONS
bench_name: db "nano-ptemod", 0
msg_frame_a: db ", TEST_PAGE maps frame A", 0
msg_frame_b: db ", TEST_PAGE maps frame B", 0
msg_neither: db ", TEST_PAGE does not map the frame N predicts", 0
