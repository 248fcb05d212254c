; nano-syscall: Adams & Agesen's "syscall" nanobenchmark: INT 0x80 from ring 3 and IRETD back
;
; The kernel (32-bit protected mode, ring 0) installs an interrupt gate with DPL 3 for vector
; 0x80 and IRETDs into a ring-3 loop that makes ITERATIONS null system calls (XOR EAX, EAX /
; INT 0x80 / DEC ECX / JNZ). Each crosses to ring 0 through the gate and the TSS's SS0:ESP0; the
; handler counts it and returns to ring 3 with IRETD. A last call with EAX = 1 ends the loop: the
; kernel drops the user frame, prints "nano-syscall: N iterations, N system calls" (the count
; the handler saw) and exits with status 0, or with status 1 if the count is off. Under the trap
; engine an iteration is one exit: the INT 0x80, which the VMM delivers through the guest's IDT;
; the IRETD from guest ring 0 (real ring 1) to ring 3 is a return to an outer ring that the
; real CPU performs without faulting. Set-up: nano.inc.

ITERATIONS  equ 4000
SYS_NULL    equ 0
SYS_DONE    equ 1

%include "nano.inc"

bench:
    mov eax, 0x80
    mov ebx, system_call
    mov cl, 0xee                ; interrupt gate, DPL 3: ring 3 may INT 0x80
    call set_gate
    mov eax, user_loop
    jmp enter_user

user_loop:                      ; ring 3
    mov ecx, ITERATIONS
.next:                          ; the measured loop
    mov eax, SYS_NULL
    int 0x80
    dec ecx
    jnz .next
    mov eax, SYS_DONE
    int 0x80

system_call:                    ; stack (TSS.ESP0): EIP, CS, EFLAGS, ESP, SS
    cmp eax, SYS_DONE
    je done
    mov eax, [syscalls]         ; count it (restartable stores: see nano.inc)
    inc eax
    mov [syscalls], eax
    xor eax, eax                ; returns 0
    iretd

done:
    mov esp, KSTACK_TOP         ; drop the user's frame: the kernel carries on
    mov esi, bench_name
    call report
    mov esi, msg_count
    call puts
    mov eax, [syscalls]
    call put_dec
    mov esi, msg_calls
    cmp dword [syscalls], ITERATIONS
    jne report_fail
    jmp report_end

syscalls:   dd 0
bench_name: db "nano-syscall", 0
msg_count:  db ", ", 0
msg_calls:  db " system calls", 0
