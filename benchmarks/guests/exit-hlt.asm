; exit-hlt: HLT woken by a timer interrupt N times (HLT exit, idle, injection, EOI, IRET)
;
; Remaps the PIC to 0x20, unmasks IRQ 0 only, programs PIT channel 0 in mode 2 with a short
; period, then loops STI / HLT / DEC ECX / JNZ: every pass sleeps until the next tick, whose
; handler (interrupt gate) sends a non-specific EOI and returns. Virtual time jumps to the tick
; while the CPU sleeps, so a pass costs what the wake-up path costs, not the period. The timer is
; stopped (IRQ 0 masked) before the report. Set-up: nano.inc; `trapvisor bench` replaces
; ITERATIONS at build time.

ITERATIONS  equ 10000
PIC1_CMD    equ 0x20
PIC1_DATA   equ 0x21
PIC2_CMD    equ 0xa0
PIC2_DATA   equ 0xa1
PIT_CH0     equ 0x40
PIT_CTRL    equ 0x43
PIT_DIVISOR equ 100             ; about 84 µs of virtual time per tick

%include "nano.inc"

bench:
    mov eax, 0x20               ; IRQ 0 after the remap
    mov ebx, timer
    mov cl, 0x8e
    call set_gate
    mov al, 0x11                ; ICW1..ICW4: master at 0x20, slave at 0x28, cascade on IR2
    out PIC1_CMD, al
    out PIC2_CMD, al
    mov al, 0x20
    out PIC1_DATA, al
    mov al, 0x28
    out PIC2_DATA, al
    mov al, 4
    out PIC1_DATA, al
    mov al, 2
    out PIC2_DATA, al
    mov al, 1
    out PIC1_DATA, al
    out PIC2_DATA, al
    mov al, 0xfe                ; only IRQ 0
    out PIC1_DATA, al
    mov al, 0xff
    out PIC2_DATA, al
    mov al, 0x34                ; channel 0, lobyte/hibyte, mode 2
    out PIT_CTRL, al
    mov al, PIT_DIVISOR & 0xff
    out PIT_CH0, al
    mov al, PIT_DIVISOR >> 8
    out PIT_CH0, al

    mov ecx, ITERATIONS
.next:                          ; the measured loop
    sti
    hlt                         ; STI's shadow covers HLT: no tick is lost
    dec ecx
    jnz .next

    cli
    mov al, 0xff                ; mask the timer again
    out PIC1_DATA, al
    mov esi, bench_name
    call report
    mov esi, nano_msg_empty
    jmp report_end

timer:
    push eax
    mov al, 0x20                ; non-specific EOI
    out PIC1_CMD, al
    pop eax
    iretd

bench_name: db "exit-hlt", 0
