; vga: writes "hello, screen" at the top left of the CGA text buffer (0xb8000, character and
; attribute bytes) in real mode, then exits through 0xf4 with status 0. `--vga` shows it.

bits 16
org 0x7c00

start:
    cli
    mov ax, 0xb800
    mov es, ax
    xor di, di
    mov si, text
    mov ah, 0x07                ; light grey on black
.next:
    lodsb
    test al, al
    jz .done
    stosw
    jmp .next
.done:
    mov al, 0
    out 0xf4, al
    hlt

text: db "hello, screen", 0

times 510 - ($ - $$) db 0
dw 0xaa55
