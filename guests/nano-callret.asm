; nano-callret: Adams & Agesen's "call/ret" nanobenchmark: N near CALL/RET pairs, no exits at all
;
; In the guest kernel (32-bit protected mode, ring 0) it calls a leaf function that only returns,
; ITERATIONS times (CALL leaf / DEC ECX / JNZ; leaf: RET), then prints "nano-callret: N
; iterations" and exits with status 0. Pure computation: nothing here is sensitive, so a trap-
; and-emulate VMM runs it at native speed, while a binary translator pays for every RET (its
; target must be looked up in the translation cache). Set-up: nano.inc.

ITERATIONS  equ 1000000

%include "nano.inc"

bench:
    mov ecx, ITERATIONS
.next:                          ; the measured loop
    call leaf
    dec ecx
    jnz .next
    mov esi, bench_name
    call report
    mov esi, nano_msg_empty
    jmp report_end

leaf:
    ret

bench_name: db "nano-callret", 0
