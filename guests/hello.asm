; hello: real-mode boot sector that prints one line on the 16550 UART and exits with status 0
;
; The smallest guest, and the README demo. It runs entirely in real mode (no BIOS: the IVT is
; empty, so it programs the UART itself), and its I/O pattern is deliberately simple so that the
; number of VM exits under the trap engine is easy to predict:
;
;   6 OUTs      initialise COM1 (IER, LCR with DLAB, divisor low, divisor high, LCR 8N1, FCR)
;   +1 OUT      MCR (DTR, RTS, OUT2)
;   per byte:   1 IN of LSR (the emulated UART's transmitter is always ready, so the THRE poll
;               loop succeeds on its first read) and 1 OUT to THR
;   1 OUT       the status byte to the debug-exit port 0xF4, which ends the run
;
; So a message of N bytes costs 7 + 2*N + 1 I/O exits (this one: 30 bytes, 68 exits), plus one
; exit for the CLI, which is privileged in the virtual-8086 mode the trap engine runs it in.

bits 16
org 0x7c00

COM1    equ 0x3f8               ; THR/RBR (DLAB=0), divisor low (DLAB=1)
IER     equ COM1 + 1            ; interrupt enable; divisor high when DLAB=1
FCR     equ COM1 + 2            ; FIFO control
LCR     equ COM1 + 3            ; line control: bit 7 = DLAB, 0x03 = 8 data bits, no parity, 1 stop
MCR     equ COM1 + 4            ; modem control: DTR | RTS | OUT2
LSR     equ COM1 + 5            ; line status: bit 5 = THRE (transmit holding register empty)
EXIT    equ 0xf4                ; debug-exit port: the byte written is the run's exit status

start:
    cli
    xor ax, ax
    mov ds, ax                  ; the message is addressed from segment 0, like the org

    ; --- initialise COM1: 115200 baud (divisor 1), 8N1, FIFOs on ---------------------------
    mov dx, IER
    xor al, al
    out dx, al                  ; IER = 0: no UART interrupts, we poll
    mov dx, LCR
    mov al, 0x80
    out dx, al                  ; DLAB = 1: ports 0/1 become the divisor latch
    mov dx, COM1
    mov al, 1
    out dx, al                  ; divisor low = 1
    mov dx, IER
    xor al, al
    out dx, al                  ; divisor high = 0
    mov dx, LCR
    mov al, 0x03
    out dx, al                  ; DLAB = 0, 8 data bits, no parity, 1 stop bit
    mov dx, FCR
    mov al, 0xc7
    out dx, al                  ; enable and clear the FIFOs, 14-byte trigger
    mov dx, MCR
    mov al, 0x0b
    out dx, al                  ; DTR, RTS, OUT2

    ; --- print the message, one byte at a time ---------------------------------------------
    mov si, message
.next:
    lodsb                       ; AL = [DS:SI], SI += 1 (the direction flag is clear at boot)
    test al, al
    jz .done
    mov ah, al                  ; keep the byte while AL is used for the status poll
    mov dx, LSR
.wait:
    in al, dx
    test al, 0x20               ; THRE: may we write the next byte?
    jz .wait
    mov dx, COM1
    mov al, ah
    out dx, al                  ; THR = byte
    jmp .next

.done:
    mov al, 0                   ; status 0: success
    out EXIT, al                ; ends the run; nothing below executes
    hlt

message:
    db "Hello from a trapvisor guest!", 10, 0
