; nano-divzero: Adams & Agesen's "divzero" nanobenchmark: DIV by zero -> #DE handler, N times
;
; In the guest kernel (32-bit protected mode, ring 0) it divides by zero ITERATIONS times (DIV ECX
; with ECX = 0 / DEC EBX / JNZ); the #DE handler (an interrupt gate) counts the fault, steps the
; frame's EIP over the 2-byte DIV and returns with IRETD. Then it prints "nano-divzero: N
; iterations, N #DE" (the count the handler saw) and exits with status 0, or with status 1 if the
; count is off. Under the trap engine an iteration is two exits: the #DE (the VMM reflects it
; through the guest's IDT) and the handler's IRETD (a return to guest ring 0, which really runs
; at ring 1, faults and is emulated). Set-up: nano.inc.

ITERATIONS  equ 4000

%include "nano.inc"

bench:
    mov eax, 0                  ; #DE
    mov ebx, divide_error
    mov cl, 0x8e
    call set_gate
    xor ecx, ecx                ; the divisor
    mov ebx, ITERATIONS
.next:                          ; the measured loop
    xor edx, edx
    mov eax, 1234
    div ecx                     ; #DE; the handler resumes after it
    dec ebx
    jnz .next

    mov esi, bench_name
    call report
    mov esi, msg_count
    call puts
    mov eax, [faults]
    call put_dec
    mov esi, msg_de
    cmp dword [faults], ITERATIONS
    jne report_fail
    jmp report_end

divide_error:                   ; stack: EIP, CS, EFLAGS (restartable stores: see nano.inc)
    push eax
    mov eax, [faults]
    inc eax
    mov [faults], eax
    mov eax, [esp + 4]
    add eax, 2                  ; skip DIV ECX (f7 f1)
    mov [esp + 4], eax
    pop eax
    iretd

faults:     dd 0
bench_name: db "nano-divzero", 0
msg_count:  db ", ", 0
msg_de:     db " #DE", 0
