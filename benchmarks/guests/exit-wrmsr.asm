; exit-wrmsr: WRMSR of IA32_SYSENTER_CS N times at guest ring 0 (an MSR_WRITE exit per pass)
;
; The value is read once, then written back in a loop of MOV ECX, 0x174 / WRMSR / DEC EBP / JNZ.
; Under trap the deprivileged WRMSR faults (#GP) and is emulated (reason 32). Set-up: nano.inc;
; `trapvisor bench` replaces ITERATIONS at build time.

ITERATIONS  equ 100000
SYSENTER_CS equ 0x174

%include "nano.inc"

bench:
    mov ecx, SYSENTER_CS
    rdmsr
    mov ebp, ITERATIONS
.next:                          ; the measured loop
    mov ecx, SYSENTER_CS
    wrmsr
    dec ebp
    jnz .next
    mov esi, bench_name
    call report
    mov esi, nano_msg_empty
    jmp report_end

bench_name: db "exit-wrmsr", 0
