; exit-cpuid: CPUID leaf 0 N times at guest ring 0 (a CPUID exit per pass under a VMM)
;
; Loop: XOR EAX, EAX / CPUID / DEC EBP / JNZ (CPUID writes EAX..EDX, so EBP counts). Natively
; Unicorn executes CPUID itself; under trap every CPUID exits (reason 10). Set-up: nano.inc;
; `trapvisor bench` replaces ITERATIONS at build time.

ITERATIONS  equ 100000

%include "nano.inc"

bench:
    mov ebp, ITERATIONS
.next:                          ; the measured loop
    xor eax, eax
    cpuid
    dec ebp
    jnz .next
    mov esi, bench_name
    call report
    mov esi, nano_msg_empty
    jmp report_end

bench_name: db "exit-cpuid", 0
