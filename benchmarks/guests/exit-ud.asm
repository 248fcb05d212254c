; exit-ud: UD2 -> #UD handler N times at guest ring 0 (an invalid-opcode exception per pass)
;
; In the guest kernel (32-bit protected mode, ring 0) it executes UD2 ITERATIONS times (UD2 /
; DEC EBX / JNZ); the #UD handler (an interrupt gate) counts the fault, steps the frame's EIP over
; the 2-byte UD2 and returns with IRETD. Then it prints "exit-ud: N iterations, N #UD" and exits
; with status 0, or with status 1 if the count is off. Unicorn reports UD2 through its
; invalid-instruction hook, not its interrupt hook: natively the CPU's delivery runs from there.
; Set-up: nano.inc; `trapvisor bench` replaces ITERATIONS at build time.

ITERATIONS  equ 4000

%include "nano.inc"

bench:
    mov eax, 6                  ; #UD
    mov ebx, invalid_opcode
    mov cl, 0x8e
    call set_gate
    mov ebx, ITERATIONS
.next:                          ; the measured loop
    ud2                         ; #UD; the handler resumes after it
    dec ebx
    jnz .next

    mov esi, bench_name
    call report
    mov esi, msg_count
    call puts
    mov eax, [faults]
    call put_dec
    mov esi, msg_ud
    cmp dword [faults], ITERATIONS
    jne report_fail
    jmp report_end

invalid_opcode:                 ; stack: EIP, CS, EFLAGS (restartable stores: see nano.inc)
    push eax
    mov eax, [faults]
    inc eax
    mov [faults], eax
    mov eax, [esp + 4]
    add eax, 2                  ; skip UD2 (0f 0b)
    mov [esp + 4], eax
    pop eax
    iretd

faults:     dd 0
bench_name: db "exit-ud", 0
msg_count:  db ", ", 0
msg_ud:     db " #UD", 0
