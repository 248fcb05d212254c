; echo: reads a line from the UART receiver (polling LSR.DR) and prints it back upper-cased
bits 16
org 0x7c00

COM1    equ 0x3f8
LSR     equ COM1 + 5

start:
    cli
    xor ax, ax
    mov ds, ax
    mov dx, COM1 + 2
    mov al, 0x07
    out dx, al                  ; FIFOs on, cleared
.read:
    mov dx, LSR
.wait:
    in al, dx
    test al, 0x01               ; DR: a received byte is waiting
    jz .wait
    mov dx, COM1
    in al, dx                   ; RBR
    cmp al, 'a'
    jb .put
    cmp al, 'z'
    ja .put
    sub al, 0x20
.put:
    out dx, al                  ; THR (the emulated transmitter is always ready)
    cmp al, 10
    jne .read
    mov al, 0
    out 0xf4, al
    hlt
