; exit-rdmsr: RDMSR of IA32_SYSENTER_CS N times at guest ring 0 (an MSR_READ exit per pass)
;
; Loop: MOV ECX, 0x174 / RDMSR / DEC EBP / JNZ. Under trap the deprivileged RDMSR faults (#GP)
; and is emulated (reason 31). Set-up: nano.inc; `trapvisor bench` replaces ITERATIONS.

ITERATIONS  equ 100000
SYSENTER_CS equ 0x174

%include "nano.inc"

bench:
    mov ebp, ITERATIONS
.next:                          ; the measured loop
    mov ecx, SYSENTER_CS
    rdmsr
    dec ebp
    jnz .next
    mov esi, bench_name
    call report
    mov esi, nano_msg_empty
    jmp report_end

bench_name: db "exit-rdmsr", 0
