; usermode: a kernel with a TSS, an int 0x80 system call and two ring-3 tasks preempted by the timer
;
; The kernel (ring 0) sets up:
;   - a GDT with ring-0 code/data (0x08, 0x10), ring-3 code/data (DPL 3: selectors 0x1b, 0x23) and
;     a 32-bit TSS (0x28) whose SS0:ESP0 is the kernel stack; LTR loads it,
;   - an IDT with the timer (IRQ 0 -> vector 0x20), #GP (13) and the system call gate int 0x80,
;     an interrupt gate with DPL 3 so that ring 3 may use it,
;   - the PIC remapped to 0x20/0x28 and PIT channel 0 at 1000 Hz.
; System calls (int 0x80, EAX = number):
;   EAX = 1 write: print ECX bytes at EBX on the serial port; returns the count in EAX
;   EAX = 2 exit:  end the ring-3 program with status EBX (the kernel continues its checks)
; Two ring-3 tasks, A and B, each with its own stack, print one line each through write and then
; spin, counting. Every timer tick preempts the running task: the handler PUSHADs the user
; registers under the IRET frame that the interrupt pushed on the TSS.ESP0 stack, copies that
; frame + registers (13 dwords) into the current task's save area, copies the other task's save
; area onto the stack, POPADs and IRETDs into it. Once each task has been preempted 5 times (and
; both have printed) the kernel keeps the CPU and checks what happened. The output does not
; depend on the slice length: B waits (in ring 3) until A's write has returned before it writes,
; system calls run with IF = 0 (interrupt gate) so every line is printed whole, and the kernel
; prints the threshold, not a count that a differently timed run could change.
; Finally a ring-3 probe executes CLI and HLT: each must raise #GP(0) into the kernel with the
; ring-3 code selector 0x1b in the frame the CPU pushed (read from the stack frame, not from the
; live CS register), and the handler skips the instruction; the probe then calls exit.
; The kernel keeps DS/ES/FS/GS = 0x23 (the flat ring-3 data segment, as i386 Linux used
; __USER_DS), so neither side reloads data segments on a privilege change.
; Exit status 0 if every check passed, 1 if one failed, 3 on an unexpected exception.

bits 16
org 0x7c00

KERNEL_CS   equ 0x08
KERNEL_DS   equ 0x10
USER_CS     equ 0x18 | 3
USER_DS     equ 0x20 | 3
TSS_SEL     equ 0x28
IDT_BASE    equ 0x1000
KSTACK_TOP  equ 0x90000         ; TSS.ESP0
STACK_A     equ 0x80000         ; ring-3 stacks
STACK_B     equ 0x70000
STACK_PROBE equ 0x60000

SYS_WRITE   equ 1
SYS_EXIT    equ 2
PREEMPTIONS equ 5               ; per task
CONTEXT     equ 13              ; dwords: PUSHAD (8) + EIP, CS, EFLAGS, ESP, SS
USER_FLAGS  equ 0x202           ; IF set, IOPL 0

start:
    cli
    xor ax, ax
    mov ds, ax
    lgdt [gdt_descriptor]
    mov eax, cr0
    or eax, 1
    mov cr0, eax
    jmp dword KERNEL_CS:protected_mode

bits 32
protected_mode:
    mov ax, KERNEL_DS
    mov ss, ax
    mov esp, KSTACK_TOP
    mov ax, USER_DS             ; flat, DPL 3: usable by the kernel and by ring 3
    mov ds, ax
    mov es, ax
    mov fs, ax
    mov gs, ax
    cld
    call serial_init
    call idt_init
    mov eax, 0x20
    mov ebx, timer_handler
    mov cl, 0x8e                ; interrupt gate, DPL 0: hardware interrupts only
    call set_gate
    mov eax, 13
    mov ebx, general_protection
    call set_gate
    mov eax, 0x80
    mov ebx, system_call
    mov cl, 0xee                ; interrupt gate, DPL 3: ring 3 may INT 0x80
    call set_gate

    ; --- the TSS descriptor (its base is only known here) and LTR ------------------------------
    mov eax, tss
    mov [gdt + TSS_SEL + 2], ax         ; base 15..0
    shr eax, 16
    mov [gdt + TSS_SEL + 4], al         ; base 23..16
    mov [gdt + TSS_SEL + 7], ah         ; base 31..24
    mov dword [tss + 4], KSTACK_TOP     ; ESP0
    mov dword [tss + 8], KERNEL_DS      ; SS0
    mov ax, TSS_SEL
    ltr ax

    mov esi, msg_title
    call puts

    ; --- PIC: remap, only IRQ 0; PIT channel 0: mode 2 at 1000 Hz ------------------------------
    mov al, 0x11
    out 0x20, al
    out 0xa0, al
    mov al, 0x20
    out 0x21, al
    mov al, 0x28
    out 0xa1, al
    mov al, 4
    out 0x21, al
    mov al, 2
    out 0xa1, al
    mov al, 1
    out 0x21, al
    out 0xa1, al
    mov al, 0xfe
    out 0x21, al
    mov al, 0xff
    out 0xa1, al
    mov al, 0x34
    out 0x43, al
    mov al, 1193 & 0xff
    out 0x40, al
    mov al, 1193 >> 8
    out 0x40, al

    ; --- start task A: its initial context goes on the kernel stack, POPAD, IRETD to ring 3 ----
    mov dword [current], 0
    mov esi, context_a
    jmp enter_user

; ESI = a saved context (PUSHAD image + IRET frame); enter it from a fresh kernel stack.
enter_user:
    mov esp, KSTACK_TOP - CONTEXT * 4
    mov edi, esp
    mov ecx, CONTEXT
    rep movsd
    popad
    iretd

; ----- the timer: count, EOI, preempt --------------------------------------------------------
timer_handler:
    pushad
    mov al, 0x20
    out 0x20, al                ; EOI
    inc dword [ticks]
    test dword [esp + 32 + 8], 0x200    ; the interrupted task's EFLAGS: IF must be set, or the
    jnz .if_set                         ; interrupt could not have been taken
    inc dword [frames_without_if]
.if_set:
    mov ebx, [current]
    inc dword [preempted + ebx * 4]
    cmp ebx, 1                  ; decide only after B's slice: A and B have had as many
    jne .switch
    cmp dword [preempted + 4], PREEMPTIONS
    jb .switch
    cmp dword [written_b], 0    ; and only once B (so A, see task_b) has printed its line
    jne tasks_done
.switch:
    mov esi, esp                ; save the interrupted task: registers + IRET frame
    mov edi, [contexts + ebx * 4]
    mov ecx, CONTEXT
    rep movsd
    xor ebx, 1                  ; the other task
    mov [current], ebx
    mov esi, [contexts + ebx * 4]
    mov edi, esp
    mov ecx, CONTEXT
    rep movsd
    popad
    iretd

; ----- int 0x80 ------------------------------------------------------------------------------
system_call:
    mov [syscall_esp], esp      ; where the CPU put the frame: on the TSS.ESP0 stack
    cmp eax, SYS_WRITE
    je .write
    cmp eax, SYS_EXIT
    je .exit
    mov eax, -1
    iretd
.write:                         ; EBX = buffer, ECX = length -> EAX = bytes written
    push ebx
    push ecx
.next:
    jecxz .written
    mov al, [ebx]
    call putc
    inc ebx
    dec ecx
    jmp .next
.written:
    pop ecx
    pop ebx
    mov eax, ecx
    iretd
.exit:
    mov [exit_status], ebx
    mov esp, KSTACK_TOP         ; drop the user's frame: the kernel carries on
    jmp probe_done

; ----- #GP: record the frame, skip the 1-byte instruction ------------------------------------
general_protection:             ; stack: error code, EIP, CS, EFLAGS, ESP, SS
    test byte [esp + 8], 3      ; a #GP in the kernel itself is a bug: report it (lib.inc)
    jz exc13
    push eax
    inc dword [gp_count]
    mov eax, [esp + 4]
    mov [gp_error], eax
    mov eax, [esp + 8]
    mov [gp_eip], eax
    movzx eax, word [esp + 12]  ; the selector is the low word of its slot
    mov [gp_cs], eax
    pop eax
    add esp, 4                  ; the error code
    inc dword [esp]             ; CLI and HLT are one byte long
    iretd

; ----- ring 3 --------------------------------------------------------------------------------
task_a:
    mov eax, SYS_WRITE
    mov ebx, msg_task_a
    mov ecx, msg_task_a_len
    int 0x80
    mov [written_a], eax
.spin:
    inc dword [spins_a]
    jmp .spin

task_b:
    cmp dword [written_a], 0    ; let A print first, however short the time slices are
    je task_b
    mov eax, SYS_WRITE
    mov ebx, msg_task_b
    mov ecx, msg_task_b_len
    int 0x80
    mov [written_b], eax
.spin:
    inc dword [spins_b]
    jmp .spin

probe:
probe_cli:
    cli                         ; privileged at CPL 3 with IOPL 0: #GP(0)
probe_hlt:
    hlt                         ; privileged at CPL 3: #GP(0)
    mov eax, SYS_EXIT
    xor ebx, ebx
    int 0x80

; ----- the kernel's checks -------------------------------------------------------------------
tasks_done:                     ; from the timer handler, IF = 0
    mov al, 0xff
    out 0x21, al                ; mask the timer
    mov esp, KSTACK_TOP

    mov esi, msg_preempted
    call puts
    mov eax, PREEMPTIONS
    call put_dec
    mov esi, msg_times
    call puts
    mov eax, [preempted]
    cmp eax, [preempted + 4]    ; (the loop above guarantees at least PREEMPTIONS each)
    call check

    mov esi, msg_ticks
    call puts
    mov eax, [preempted]
    add eax, [preempted + 4]
    cmp eax, [ticks]
    call check

    mov esi, msg_if
    call puts
    cmp dword [frames_without_if], 0
    call check

    mov esi, msg_writes
    call puts
    mov eax, [written_a]
    call put_dec
    mov al, '/'
    call putc
    mov eax, [written_b]
    call put_dec
    cmp dword [written_a], msg_task_a_len
    jne .writes_checked
    cmp dword [written_b], msg_task_b_len
.writes_checked:
    call check

    mov esi, msg_spins
    call puts
    xor eax, eax
    cmp dword [spins_a], 0
    sete al                     ; AL = 1: task A never counted
    cmp dword [spins_b], 0
    sete ah
    test eax, eax
    call check

    mov esi, msg_esp0
    call puts
    mov eax, [syscall_esp]
    mov ecx, 8
    call put_hex
    cmp eax, KSTACK_TOP - 20    ; EIP, CS, EFLAGS, ESP, SS
    call check

    ; --- ring 3 may not execute CLI or HLT --------------------------------------------------
    mov esi, context_probe
    jmp enter_user
probe_done:                     ; from the exit system call
    mov esi, msg_gp
    call puts
    mov eax, [gp_count]
    call put_dec
    mov esi, msg_gp_error
    call puts
    mov eax, [gp_error]
    mov ecx, 4
    call put_hex
    mov esi, msg_gp_cs
    call puts
    mov eax, [gp_cs]
    mov ecx, 4
    call put_hex
    cmp dword [gp_count], 2
    jne .gp_checked
    cmp dword [gp_error], 0
    jne .gp_checked
    cmp dword [gp_cs], USER_CS
.gp_checked:
    call check

    mov esi, msg_gp_eip
    call puts
    mov eax, [gp_eip]
    cmp eax, probe_hlt          ; the last #GP: HLT, after CLI was skipped
    call check

    mov esi, msg_exit
    call puts
    mov eax, [exit_status]
    call put_dec
    cmp eax, 0
    call check
    jmp finish

%include "lib.inc"

; ----- data ----------------------------------------------------------------------------------
current:        dd 0
ticks:          dd 0
frames_without_if: dd 0
preempted:      dd 0, 0
syscall_esp:    dd 0
exit_status:    dd -1
gp_count:       dd 0
gp_error:       dd -1
gp_eip:         dd 0
gp_cs:          dd 0
written_a:      dd 0            ; ring-3 variables
written_b:      dd 0
spins_a:        dd 0
spins_b:        dd 0

contexts:       dd context_a, context_b
;                   EDI ESI EBP ESP EBX EDX ECX EAX  EIP     CS       EFLAGS      ESP      SS
context_a:      dd  0,  0,  0,  0,  0,  0,  0,  0,  task_a, USER_CS, USER_FLAGS, STACK_A, USER_DS
context_b:      dd  0,  0,  0,  0,  0,  0,  0,  0,  task_b, USER_CS, USER_FLAGS, STACK_B, USER_DS
context_probe:  dd  0,  0,  0,  0,  0,  0,  0,  0,  probe,  USER_CS, USER_FLAGS, STACK_PROBE, USER_DS

align 8
gdt:
    dq 0                        ; 0x00: null
    dw 0xffff, 0x0000           ; 0x08: ring-0 code, flat
    db 0x00, 0x9a, 0xcf, 0x00
    dw 0xffff, 0x0000           ; 0x10: ring-0 data, flat
    db 0x00, 0x92, 0xcf, 0x00
    dw 0xffff, 0x0000           ; 0x18: ring-3 code, flat (DPL 3: access byte 0xfa)
    db 0x00, 0xfa, 0xcf, 0x00
    dw 0xffff, 0x0000           ; 0x20: ring-3 data, flat (DPL 3: access byte 0xf2)
    db 0x00, 0xf2, 0xcf, 0x00
    dw 103, 0x0000              ; 0x28: 32-bit TSS, limit 103, base filled in at run time
    db 0x00, 0x89, 0x00, 0x00
gdt_end:

gdt_descriptor:
    dw gdt_end - gdt - 1
    dd gdt

align 4
tss:
    times 25 dd 0               ; link, ESP0, SS0, ... (only ESP0 and SS0 are used)
    dw 0                        ; T flag
    dw 104                      ; I/O map base at the limit: no map, every port denied to ring 3

msg_title:      db "usermode: ring-3 tasks, int 0x80 system calls, timer preemption", 10, 0
msg_task_a:     db "task A: hello from ring 3", 10
msg_task_a_len  equ $ - msg_task_a
msg_task_b:     db "task B: hello from ring 3", 10
msg_task_b_len  equ $ - msg_task_b
msg_preempted:  db "both tasks preempted by the timer ", 0
msg_times:      db " times", 0
msg_ticks:      db "every timer tick preempted a task", 0
msg_if:         db "every timer frame saved EFLAGS.IF = 1", 0
msg_writes:     db "write system calls returned ", 0
msg_spins:      db "both tasks ran their loops in ring 3", 0
msg_esp0:       db "int 0x80 from ring 3 switched to the TSS.ESP0 stack: frame at ", 0
msg_gp:         db "cli and hlt in ring 3 raised #GP: ", 0
msg_gp_error:   db " times, error code ", 0
msg_gp_cs:      db ", CS in the frame ", 0
msg_gp_eip:     db "the #GP frame pointed at the faulting instruction", 0
msg_exit:       db "ring-3 probe exited with status ", 0
