; apic-id: a read of the local APIC's ID register N times at guest ring 0 (what xv6's mycpu()
; does in every lock)
;
; Loop: MOV EAX, [0xFEE00020] / DEC EBP / JNZ. Natively the read reaches the APIC model in
; Unicorn's MMIO callback; under a VMM it is an EPT_VIOLATION exit, or with APIC virtualization
; (--apicv on) answered without an exit (engines/apic_access.py). Set-up: nano.inc;
; `trapvisor bench` replaces ITERATIONS.

ITERATIONS  equ 100000
APIC_ID     equ 0xfee00020

%include "nano.inc"

bench:
    mov ebp, ITERATIONS
.next:                          ; the measured loop
    mov eax, [APIC_ID]
    dec ebp
    jnz .next
    mov esi, bench_name
    call report
    mov esi, nano_msg_empty
    jmp report_end

bench_name: db "apic-id", 0
