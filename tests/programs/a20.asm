; a20: the A20 gate in real mode (PC AT wrap-around at 1 MiB)
;
; With the gate closed (i8042 command 0xDD; port 0x92 bit 1 clear) physical address bit 20 is
; forced to 0, so FFFF:0610 (linear 0x100600) is the byte at 0x600; with it open (port 0x92
; bit 1, then i8042 command 0xDF) it is a byte of its own above 1 MiB. The guest prints on 0xE9
; what it read back, one letter each:
;   W  a store through FFFF:0610 with the gate closed reached 0x600   (w: it did not)
;   N  a store through FFFF:0610 with the gate open left 0x600 alone  (n: it did not)
;   K  the byte above 1 MiB kept the value stored there               (k: it did not)
;   C  the gate closed again by i8042 0xDD wraps once more            (c: it did not)
; then exits through 0xF4 with status 0.

bits 16
org 0x7c00

LOW     equ 0x0600
HIGH    equ 0x0610              ; FFFF:0610 = 0x100600

start:
    cli
    xor ax, ax
    mov ds, ax
    mov ax, 0xffff
    mov es, ax
    in al, 0x92                 ; fast A20 off (the i8042's output port drives it too)
    and al, 0xfd
    out 0x92, al
    call kbc_wait
    mov al, 0xdd                ; i8042: A20 off
    out 0x64, al
    call kbc_wait

    mov byte [LOW], 0x11
    mov byte [es:HIGH], 0x22
    mov bl, 'W'
    cmp byte [LOW], 0x22
    call report

    in al, 0x92                 ; fast A20 on
    or al, 2
    out 0x92, al
    mov byte [es:HIGH], 0x33
    mov bl, 'N'
    cmp byte [LOW], 0x22
    call report
    mov bl, 'K'
    cmp byte [es:HIGH], 0x33
    call report

    in al, 0x92                 ; fast A20 off again, then the i8042 closes its side
    and al, 0xfd
    out 0x92, al
    mov al, 0xdf                ; i8042 A20 on: the gate stays open
    out 0x64, al
    call kbc_wait
    mov al, 0xdd
    out 0x64, al
    call kbc_wait
    mov byte [es:HIGH], 0x44
    mov bl, 'C'
    cmp byte [LOW], 0x44
    call report

    mov al, 10
    out 0xe9, al
    mov al, 0
    out 0xf4, al
    hlt

report:                         ; ZF = 1: print BL, else BL in lower case
    mov al, bl
    je .out
    or al, 0x20
.out:
    out 0xe9, al
    ret

kbc_wait:                       ; until the controller's input buffer is empty
    in al, 0x64
    test al, 2
    jnz kbc_wait
    ret

times 510 - ($ - $$) db 0
dw 0xaa55
