; nano-in: Adams & Agesen's "in" nanobenchmark: IN AL, 0x80 (the null POST device) N times
;
; In the guest kernel (32-bit protected mode, ring 0) it reads port 0x80, which holds the
; platform's null device, ITERATIONS times in a loop of IN AL, 0x80 / DEC ECX / JNZ, then prints
; "nano-in: N iterations" and exits with status 0. Under the trap engine each IN is one
; IO_INSTRUCTION exit handled by the device model; natively the port is wired to the CPU.
; Set-up: nano.inc.

ITERATIONS  equ 100000
POST_PORT   equ 0x80

%include "nano.inc"

bench:
    mov ecx, ITERATIONS
.next:                          ; the measured loop
    in al, POST_PORT
    dec ecx
    jnz .next
    mov esi, bench_name
    call report
    mov esi, nano_msg_empty
    jmp report_end

bench_name: db "nano-in", 0
