; nano-crwrite: Adams & Agesen's "cr8wr" adapted to 32-bit: MOV CR0 keeping its value, N times
;
; Adams & Agesen's "cr8wr" nanobenchmark measures a write to the task-priority register CR8,
; which 32-bit x86 does not have; here it is a write to CR0 that keeps its value, so no mode,
; paging or TLB state changes (KVM's vmexit test toggles CR0.WP in the same spirit). As with CR8
; and a TPR shadow, a VT-x VMM can let it run without an exit (CR0 guest/host mask and read
; shadow agreeing with the value written); trap-and-emulate cannot. In the guest kernel (32-bit
; protected mode, ring 0) it reads CR0 once, then writes it back ITERATIONS times in a loop of
; MOV CR0, EAX / DEC ECX / JNZ, prints "nano-crwrite: N iterations" and exits with status 0.
; Under the trap engine each write is one CR_ACCESS exit (MOV to CR at ring 1 raises #GP; the
; VMM emulates it on the shadow CR0). Set-up: nano.inc.

ITERATIONS  equ 40000

%include "nano.inc"

bench:
    mov eax, cr0
    mov ecx, ITERATIONS
.next:                          ; the measured loop
    mov cr0, eax
    dec ecx
    jnz .next
    mov esi, bench_name
    call report
    mov esi, nano_msg_empty
    jmp report_end

bench_name: db "nano-crwrite", 0
