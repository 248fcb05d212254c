; pmode: switches from real mode to 32-bit protected mode and checks segments, IDT, exceptions, int
;
; The classic boot sequence: in real mode, CLI, LGDT a flat GDT (4 GiB ring-0 code at 0x08 and
; data at 0x10), set CR0.PE and far-jump into 32-bit code; there, reload DS/ES/FS/GS/SS, set ESP,
; build an IDT and LIDT it. Then it checks and prints:
;   - that it runs 32-bit code (0xffff + 1 is 0x10000 with no operand-size prefix),
;   - that DS was loaded with the data selector 0x10 (read back with MOV; DS is not ring-compressed
;     by the trap engine, so both engines must show 0x0010),
;   - that a divide by zero raises #DE through the IDT (the handler records the vector and skips
;     the 2-byte DIV),
;   - that UD2 raises #UD through the IDT (the handler skips the 2-byte UD2),
;   - that INT 0x30 reaches its handler,
;   - that CR0 read back has PE set.
; Exit status 0 if every check passed, 1 if one failed, 3 on an unexpected exception.

bits 16
org 0x7c00

KERNEL_CS   equ 0x08
KERNEL_DS   equ 0x10
IDT_BASE    equ 0x1000          ; 256 gates = 2 KiB at 0x1000..0x17ff
STACK_TOP   equ 0x90000

start:
    cli
    xor ax, ax
    mov ds, ax
    lgdt [gdt_descriptor]
    mov eax, cr0
    or eax, 1                   ; CR0.PE
    mov cr0, eax
    jmp dword KERNEL_CS:protected_mode

bits 32
protected_mode:
    mov ax, KERNEL_DS
    mov ds, ax
    mov es, ax
    mov fs, ax
    mov gs, ax
    mov ss, ax
    mov esp, STACK_TOP
    call serial_init
    call idt_init
    mov eax, 0                  ; #DE
    mov ebx, divide_error
    mov cl, 0x8e
    call set_gate
    mov eax, 6                  ; #UD
    mov ebx, invalid_opcode
    call set_gate
    mov eax, 0x30               ; a software interrupt
    mov ebx, int30_handler
    call set_gate

    mov esi, msg_title
    call puts

    ; --- 32-bit code: INC EAX without a 0x66 prefix carries into bit 16 ------------------------
    mov esi, msg_32bit
    call puts
    mov eax, 0xffff
    inc eax
    mov ecx, 8
    call put_hex
    cmp eax, 0x10000
    call check

    ; --- DS holds the data selector -----------------------------------------------------------
    mov esi, msg_ds
    call puts
    xor eax, eax
    mov ax, ds
    mov ecx, 4
    call put_hex
    cmp eax, KERNEL_DS
    call check

    ; --- #DE through the IDT --------------------------------------------------------------------
    mov esi, msg_de
    call puts
    mov dword [last_vector], 0xff
    mov eax, 1234
    xor edx, edx
    xor ecx, ecx
    div ecx                     ; #DE; the handler resumes at the next instruction
    mov eax, [last_vector]
    mov ecx, 2
    call put_hex
    cmp dword [last_vector], 0
    call check

    ; --- #UD through the IDT --------------------------------------------------------------------
    mov esi, msg_ud
    call puts
    mov dword [last_vector], 0xff
    ud2                         ; #UD; the handler resumes at the next instruction
    mov eax, [last_vector]
    mov ecx, 2
    call put_hex
    cmp dword [last_vector], 6
    call check

    ; --- INT 0x30 -------------------------------------------------------------------------------
    mov esi, msg_int30
    call puts
    mov dword [last_vector], 0xff
    int 0x30
    mov eax, [last_vector]
    mov ecx, 2
    call put_hex
    cmp dword [last_vector], 0x30
    call check

    ; --- CR0.PE ---------------------------------------------------------------------------------
    mov esi, msg_cr0
    call puts
    mov eax, cr0
    and eax, 1
    call put_dec
    cmp eax, 1
    call check

    jmp finish

; ----- handlers (interrupt gates: EIP, CS, EFLAGS on the stack, no error code) ----------------
divide_error:
    mov dword [last_vector], 0
    add dword [esp], 2          ; skip DIV ECX (f7 f1)
    iretd

invalid_opcode:
    mov dword [last_vector], 6
    add dword [esp], 2          ; skip UD2 (0f 0b)
    iretd

int30_handler:
    mov dword [last_vector], 0x30
    iretd                       ; INT n pushed the address of the next instruction

%include "lib.inc"

last_vector:
    dd 0

align 8
gdt:
    dq 0                        ; 0x00: null
    dw 0xffff, 0x0000           ; 0x08: code, base 0, limit 4 GiB, 32-bit, DPL 0, execute/read
    db 0x00, 0x9a, 0xcf, 0x00
    dw 0xffff, 0x0000           ; 0x10: data, base 0, limit 4 GiB, 32-bit, DPL 0, read/write
    db 0x00, 0x92, 0xcf, 0x00
gdt_end:

gdt_descriptor:
    dw gdt_end - gdt - 1
    dd gdt

msg_title:  db "pmode: real mode -> 32-bit protected mode", 10, 0
msg_32bit:  db "32-bit code: 0xffff + 1 = ", 0
msg_ds:     db "DS after reload = ", 0
msg_de:     db "div by zero raised #DE through the IDT: vector ", 0
msg_ud:     db "ud2 raised #UD through the IDT: vector ", 0
msg_int30:  db "int 0x30 reached its handler: vector ", 0
msg_cr0:    db "CR0.PE = ", 0
