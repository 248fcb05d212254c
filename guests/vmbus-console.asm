; vmbus-console: an enlightened guest that prints its greeting through the synthetic VMBus console
;
; Needs the micro hypervisor (SynIC, HvCallPostMessage/HvCallSignalEvent, a parent partition with
; the vmbus-console VSP). After entering 32-bit protected mode it programs the SynIC, negotiates
; VMBus version 4.0, requests the offers, picks the one whose class GUID is the console's
; (3a7e0c52-6f1d-4b8e-9c1a-5d2f7e6b4a01), creates a GPADL for a ring pair (6 pages: 3 out, 3 in)
; and opens the channel. It then sends GREETING in packets of at most CHUNK bytes, each one a
; VM_PKT_DATA_INBAND {byte_count u32, reserved u32, bytes}; only the last asks for a completion,
; then it signals the channel once (the ring went from empty to non-empty) and waits for that
; completion ({status u32, byte_count u32}) before it reports on COM1 and exits 0.
; Status 2 if a VMBus step failed (it prints which: under the monolithic hypervisor the first
; hypercall fails with HV_STATUS_INVALID_HYPERCALL_CODE), 3 on an unexpected exception.

bits 16
org 0x7c00

KERNEL_CS   equ 0x08
KERNEL_DS   equ 0x10
IDT_BASE    equ 0x1000
STACK_TOP   equ 0x90000
CHUNK       equ 64
PACKET_BUF  equ 0x26000             ; byte_count, reserved, then up to CHUNK bytes

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
    cld
    call serial_init
    call idt_init
    mov esi, msg_title
    call puts
    call synic_init
    call vmbus_connect
    mov esi, console_class
    call vmbus_find_offer
    call vmbus_open
    mov esi, msg_open
    call puts
    mov eax, [chan_relid]
    mov ecx, 2
    call put_hex
    mov al, 10
    call putc

    ; --- the greeting, CHUNK bytes per packet ---------------------------------------------------
    mov esi, greeting
    mov ebx, GREETING_LENGTH        ; bytes left
.packet:
    mov ecx, CHUNK
    cmp ebx, ecx
    jae .sized
    mov ecx, ebx
.sized:
    mov edi, PACKET_BUF
    mov [edi], ecx                  ; byte_count
    mov dword [edi + 4], 0
    add edi, 8
    push ecx
    rep movsb                       ; ESI advances through the greeting
    pop ecx
    sub ebx, ecx
    inc dword [trans_id]
    push esi
    push ebx
    mov edx, [trans_id]
    test ebx, ebx
    mov ebx, 0
    jnz .send
    mov ebx, FLAG_COMPLETION        ; the last packet asks for a completion
.send:
    add ecx, 8
    mov esi, PACKET_BUF
    call ring_send
    pop ebx
    pop esi
    test ebx, ebx
    jnz .packet
    call ring_kick                  ; one HvCallSignalEvent for the whole batch

    ; --- the completion of the last packet ------------------------------------------------------
    call ring_receive
    cmp ecx, VM_PKT_COMP
    jne .bad_completion
    cmp edx, [trans_id]
    jne .bad_completion
    cmp dword [RECV_BUF], 0         ; status
    jne .bad_completion
    mov esi, msg_sent
    call puts
    mov eax, GREETING_LENGTH
    call put_dec
    mov esi, msg_in
    call puts
    mov eax, [packets_sent]
    call put_dec
    mov esi, msg_packets
    call puts
    mov eax, [signals_sent]
    call put_dec
    mov esi, msg_signals
    call puts
    xor al, al
    jmp exit
.bad_completion:
    mov esi, msg_bad_completion
    jmp vmbus_fail

%include "lib.inc"
%include "vmbus.inc"

trans_id:   dd 0

console_class:                      ; 3a7e0c52-6f1d-4b8e-9c1a-5d2f7e6b4a01, Windows byte order
    db 0x52, 0x0c, 0x7e, 0x3a, 0x1d, 0x6f, 0x8e, 0x4b
    db 0x9c, 0x1a, 0x5d, 0x2f, 0x7e, 0x6b, 0x4a, 0x01

align 8
gdt:
    dq 0
    dw 0xffff, 0x0000               ; 0x08: flat code, DPL 0
    db 0x00, 0x9a, 0xcf, 0x00
    dw 0xffff, 0x0000               ; 0x10: flat data, DPL 0
    db 0x00, 0x92, 0xcf, 0x00
gdt_end:

gdt_descriptor:
    dw gdt_end - gdt - 1
    dd gdt

greeting:
    db "Hello from an enlightened trapvisor guest, over the VMBus synthetic console!", 10
    db "These lines did not go through the emulated 16550: the guest batched them into", 10
    db "VM_PKT_DATA_INBAND packets in a ring buffer it shares with the parent partition,", 10
    db "signalled the channel once with HvCallSignalEvent, and the console VSP printed them.", 10
GREETING_LENGTH equ $ - greeting

msg_title:          db "vmbus-console: SynIC, VMBus 4.0, the console channel", 10, 0
msg_open:           db "console channel open, relid ", 0
msg_sent:           db "sent ", 0
msg_in:             db " bytes in ", 0
msg_packets:        db " packets with ", 0
msg_signals:        db " signal(s); the last completion came back with status 0", 10, 0
msg_bad_completion: db "the console's completion is missing or failed", 0
