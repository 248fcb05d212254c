; garbage: jumps into bytes that do not decode as an x86 instruction; they raise #UD
;
; Real mode. 0f ff ff ff is no instruction ("UD0" with a ModRM byte in newer manuals): the CPU
; raises #UD (vector 6) with the saved IP pointing at its first byte. This machine's IVT is all
; zeros, so without a handler the CPU would "return" to 0000:0000 and execute the IVT itself as
; code, wandering through memory until --timeout (checked under native). The fixture therefore
; points IVT entry 6 at a handler that prints "#UD at the garbage" (or "#UD elsewhere") on the
; port-0xE9 console and stops in CLI; HLT, so the run ends in a defined state with a report
; (halted, exit status 3) under every engine.

bits 16
org 0x7c00

start:
    cli
    xor ax, ax
    mov ds, ax
    mov word [6 * 4], invalid_opcode    ; IVT entry 6: offset
    mov word [6 * 4 + 2], 0             ;              segment
    jmp garbage

invalid_opcode:                 ; stack: IP, CS, FLAGS
    mov si, msg_here
    mov bp, sp
    cmp word [bp], garbage
    je .print
    mov si, msg_elsewhere
.print:
    lodsb
    test al, al
    jz .stop
    out 0xe9, al
    jmp .print
.stop:
    cli
    hlt                         ; nothing can wake the CPU: the run ends here
    jmp .stop

msg_here:      db "#UD at the garbage", 10, 0
msg_elsewhere: db "#UD elsewhere", 10, 0

garbage:
    db 0x0f, 0xff, 0xff, 0xff
