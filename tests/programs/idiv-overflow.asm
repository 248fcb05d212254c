; idiv-overflow: 32-bit IDIV of EDX:EAX = 0x80000000_00000000 by -1, in four operand forms.
;
; The CPU raises #DE for that dividend whatever the divisor; QEMU's helper would divide INT64_MIN
; by -1 on the host and kill the hypervisor with SIGFPE (emu/divide_guard.py). The #DE handler
; checks that EAX, EDX and ECX are what the IDIV saw, prints one letter per form, and goes on;
; the run ends with status 0 after "RMAD" (register, [bx], [eax+disp], [edx+disp]).
bits 16
org 0x7c00

start:
    cli
    xor ax, ax
    mov ds, ax
    mov ss, ax
    mov sp, 0x7000
    mov word [0], de_handler        ; IVT vector 0
    mov word [2], 0
    mov dword [0x500], -1           ; the memory divisors
    mov dword [0x504], -1

    mov word [next], form_m
    mov byte [letter], 'R'
    call dividend
    idiv ecx
    jmp fail
form_m:
    mov word [next], form_a
    mov byte [letter], 'M'
    mov bx, 0x500
    call dividend
    idiv dword [bx]
    jmp fail
form_a:
    mov word [next], form_d
    mov byte [letter], 'A'
    call dividend
    idiv dword [eax + 0x500]        ; EAX = 0: the divisor at 0x500
    jmp fail
form_d:
    mov word [next], done
    mov byte [letter], 'D'
    call dividend
    idiv dword [edx + 0x80000504]   ; EDX = 0x80000000: wraps to 0x504
    jmp fail
done:
    mov al, 0x0a
    out 0xe9, al
    xor al, al
    out 0xf4, al

dividend:
    mov eax, 0
    mov edx, 0x80000000
    mov ecx, -1
    ret

de_handler:                         ; #DE: the registers must be as the IDIV found them
    cmp eax, 0
    jne fail
    cmp edx, 0x80000000
    jne fail
    cmp ecx, -1
    jne fail
    add sp, 6                       ; drop the exception frame
    mov al, [letter]
    out 0xe9, al
    jmp word [next]

fail:
    mov al, 1
    out 0xf4, al

next:   dw 0
letter: db 0
