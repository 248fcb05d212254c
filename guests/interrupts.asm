; interrupts: PIT timer interrupts through a remapped 8259 PIC into a protected-mode HLT idle loop
;
; After entering 32-bit protected mode it remaps the PIC pair to vectors 0x20-0x2F (ICW1-ICW4),
; unmasks only IRQ 0, programs PIT channel 0 for 1000 Hz in mode 2 (rate generator, divisor 1193)
; and installs a timer handler (interrupt gate, vector 0x20) that counts ticks and sends a
; non-specific EOI. The main loop is the classic race-free idle loop
;
;       cli / test the condition / sti / hlt (STI's one-instruction shadow covers the HLT)
;
; and prints "tick 10" ... "tick 50" as the count reaches each threshold (it prints the threshold,
; never a count sampled at a time that depends on the engine). Then it checks:
;   - every tick woke the HLT loop exactly once (50 wake-ups for 50 ticks): no tick was lost
;     between STI and HLT, and HLT never returned without an interrupt,
;   - an interrupt is held while IF = 0: with interrupts off it burns ~5 timer periods in a loop
;     and the count must not move,
;   - STI; NOP; CLI takes exactly one interrupt, between the NOP and the CLI (STI's shadow): the
;     PIC latched one edge in IRR while IF was 0 and the later edges merged into it,
;   - with IRQ 0 masked in the PIC's IMR no tick arrives even with IF = 1 for ~3 periods.
; Virtual time is 1 ns per guest instruction, so a timer period is ~1,000,000 instructions.
; Exit status 0 if every check passed, 1 if one failed, 3 on an unexpected exception.

bits 16
org 0x7c00

KERNEL_CS   equ 0x08
KERNEL_DS   equ 0x10
IDT_BASE    equ 0x1000
STACK_TOP   equ 0x90000

PIC1_CMD    equ 0x20
PIC1_DATA   equ 0x21
PIC2_CMD    equ 0xa0
PIC2_DATA   equ 0xa1
PIC_EOI     equ 0x20
IRQ0_VECTOR equ 0x20

PIT_CH0     equ 0x40
PIT_CTRL    equ 0x43
PIT_HZ      equ 1000
PIT_DIVISOR equ 1193            ; 1193182 Hz / 1193 = 1000.15 Hz

LAST_TICK   equ 50
BURN_LOOPS  equ 100000          ; 50 instructions each: ~5 ms, ~5 timer periods

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
    mov ds, ax
    mov es, ax
    mov fs, ax
    mov gs, ax
    mov ss, ax
    mov esp, STACK_TOP
    call serial_init
    call idt_init
    mov eax, IRQ0_VECTOR
    mov ebx, timer_handler
    mov cl, 0x8e                ; interrupt gate: IF is cleared on entry
    call set_gate

    mov esi, msg_title
    call puts

    ; --- remap the PIC pair: master 0x20-0x27, slave 0x28-0x2f --------------------------------
    mov al, 0x11                ; ICW1: edge triggered, cascade, ICW4 follows
    out PIC1_CMD, al
    out PIC2_CMD, al
    mov al, 0x20                ; ICW2: vector bases
    out PIC1_DATA, al
    mov al, 0x28
    out PIC2_DATA, al
    mov al, 4                   ; ICW3: master has the slave on IR2, slave's cascade id is 2
    out PIC1_DATA, al
    mov al, 2
    out PIC2_DATA, al
    mov al, 1                   ; ICW4: 8086 mode
    out PIC1_DATA, al
    out PIC2_DATA, al
    mov al, 0xfe                ; OCW1: only IRQ 0 (the timer) unmasked
    out PIC1_DATA, al
    mov al, 0xff
    out PIC2_DATA, al

    ; --- PIT channel 0: mode 2, 1000 Hz -------------------------------------------------------
    mov al, 0x34                ; channel 0, lobyte/hibyte, mode 2, binary
    out PIT_CTRL, al
    mov al, PIT_DIVISOR & 0xff
    out PIT_CH0, al
    mov al, PIT_DIVISOR >> 8
    out PIT_CH0, al

    mov esi, msg_setup
    call puts

    ; --- the HLT idle loop --------------------------------------------------------------------
    mov dword [next_report], 10
idle:
    cli
    mov eax, [ticks]
    cmp eax, [next_report]
    jae .report
    sti
    hlt                         ; sleeps until the next tick (STI's shadow: no tick is lost)
    inc dword [wakeups]
    jmp idle
.report:
    mov esi, msg_tick
    call puts
    mov eax, [next_report]
    call put_dec
    mov al, 10
    call putc
    add dword [next_report], 10
    cmp dword [next_report], LAST_TICK
    jbe idle

    ; IF = 0 from here on, until the STI below.
    mov esi, msg_wakeups
    call puts
    mov eax, [wakeups]
    call put_dec
    mov esi, msg_wakeups2
    call puts
    mov eax, [ticks]
    call put_dec
    mov esi, msg_ticks
    call puts
    mov eax, [wakeups]
    cmp eax, [ticks]
    call check

    ; --- an interrupt is held while IF = 0 ----------------------------------------------------
    mov ebx, [ticks]            ; EBX = ticks before
    mov ecx, BURN_LOOPS
.burn:
    times 48 nop                ; a long loop body: few, long translated blocks are cheap to run
    dec ecx
    jnz .burn
    mov esi, msg_held
    call puts
    mov eax, [ticks]
    sub eax, ebx
    call put_dec
    cmp eax, 0
    call check

    ; --- STI delivers the one latched edge ----------------------------------------------------
    sti                         ; IF = 1 takes effect after the next instruction (STI shadow):
    nop                         ; the latched interrupt is taken after this NOP, before the CLI
    cli
    mov esi, msg_latched
    call puts
    mov eax, [ticks]
    sub eax, ebx
    call put_dec
    cmp eax, 1
    call check

    ; --- a masked IRQ never arrives -----------------------------------------------------------
    mov al, 0xff                ; OCW1: mask IRQ 0 as well
    out PIC1_DATA, al
    mov ebx, [ticks]
    sti
    mov ecx, BURN_LOOPS * 3 / 5
.burn_masked:
    times 48 nop
    dec ecx
    jnz .burn_masked
    cli
    mov esi, msg_masked
    call puts
    mov eax, [ticks]
    sub eax, ebx
    call put_dec
    cmp eax, 0
    call check

    mov esi, msg_summary
    call puts
    mov eax, [ticks]
    call put_dec
    mov esi, msg_summary2
    call puts
    jmp finish

; ----- IRQ 0 -------------------------------------------------------------------------------------
timer_handler:
    push eax
    inc dword [ticks]
    mov al, PIC_EOI
    out PIC1_CMD, al            ; non-specific EOI to the master
    pop eax
    iretd

%include "lib.inc"

ticks:          dd 0
wakeups:        dd 0
next_report:    dd 0

align 8
gdt:
    dq 0                        ; 0x00: null
    dw 0xffff, 0x0000           ; 0x08: flat code, DPL 0
    db 0x00, 0x9a, 0xcf, 0x00
    dw 0xffff, 0x0000           ; 0x10: flat data, DPL 0
    db 0x00, 0x92, 0xcf, 0x00
gdt_end:

gdt_descriptor:
    dw gdt_end - gdt - 1
    dd gdt

msg_title:    db "interrupts: PIT timer through the 8259 PIC into a HLT idle loop", 10, 0
msg_setup:    db "PIC remapped to 0x20/0x28, PIT channel 0 at 1000 Hz (mode 2, divisor 1193)", 10, 0
msg_tick:     db "tick ", 0
msg_wakeups:  db "HLT woke ", 0
msg_wakeups2: db " times for ", 0
msg_ticks:    db " ticks", 0
msg_held:     db "ticks taken with IF=0 during ~5 timer periods: ", 0
msg_latched:  db "ticks taken by STI; NOP; CLI (one latched edge): ", 0
msg_masked:   db "ticks taken with IRQ 0 masked in the IMR during ~3 periods: ", 0
msg_summary:  db "timer masked after ", 0
msg_summary2: db " ticks", 10, 0
