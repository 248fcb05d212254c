; exit-vmcall: VMCALL N times at guest ring 0 (a hypercall exit per pass under a VMM)
;
; Under a VMM each VMCALL exits (reason 18) and the hypervisor fails the unknown call code in
; EAX. With no hypervisor (the native engine) VMCALL raises #UD: the guest's #UD handler steps
; over the 3 bytes, so the native row is "VMCALL as #UD delivered to the guest". Set-up:
; nano.inc; `trapvisor bench` replaces ITERATIONS at build time.

ITERATIONS  equ 100000

%include "nano.inc"

bench:
    mov eax, 6                  ; #UD
    mov ebx, invalid_opcode
    mov cl, 0x8e
    call set_gate
    mov ebp, ITERATIONS
.next:                          ; the measured loop
    xor eax, eax
    vmcall
    dec ebp
    jnz .next
    mov esi, bench_name
    call report
    mov esi, nano_msg_empty
    jmp report_end

invalid_opcode:                 ; stack: EIP, CS, EFLAGS
    add dword [esp], 3          ; skip VMCALL (0f 01 c1)
    iretd

bench_name: db "exit-vmcall", 0
