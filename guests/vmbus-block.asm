; vmbus-block: an enlightened guest that writes, reads back and verifies sectors of the parent's disk
;
; Needs the micro hypervisor (SynIC, hypercalls, the vmbus-block VSP in the parent partition, whose
; disk image is a file only the parent opens). After entering 32-bit protected mode it brings up
; VMBus as vmbus-console does, opens the channel whose class GUID is the block device's
; (3a7e0c52-6f1d-4b8e-9c1a-5d2f7e6b4a02) and sends requests, each one VM_PKT_DATA_INBAND packet
; with a completion requested: {op u32, count u32, sector u64} + count x 512 bytes for WRITE; the
; completion with the same trans_id is {status u32, count u32, sector u64} + the data for READ
; (ops: 1 READ, 2 WRITE, 3 GET_CAPACITY; status 0 ok, 2 out of range). It checks and prints:
;   - GET_CAPACITY answers, with a non-zero size,
;   - WRITE of 4 sectors at sector 8 with a pattern completes with status 0,
;   - READ of the same 4 sectors completes with status 0 and returns the pattern byte for byte,
;   - READ past the end of the disk is refused with status 2 (out of range).
; Exit status 0 if every check passed, 1 if one failed, 2 if a VMBus step failed, 3 on an
; unexpected exception.

bits 16
org 0x7c00

KERNEL_CS   equ 0x08
KERNEL_DS   equ 0x10
IDT_BASE    equ 0x1000
STACK_TOP   equ 0x90000
REQ_BUF     equ 0x26000             ; request header, then the WRITE data
PATTERN     equ REQ_BUF + 16
SECTORS     equ 4
FIRST       equ 8
BYTES       equ SECTORS * 512
BLOCK_READ  equ 1
BLOCK_WRITE equ 2
BLOCK_GET_CAPACITY equ 3

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
    mov esi, block_class
    call vmbus_find_offer
    call vmbus_open
    mov esi, msg_open
    call puts
    mov eax, [chan_relid]
    mov ecx, 2
    call put_hex
    mov al, 10
    call putc

    ; --- GET_CAPACITY -----------------------------------------------------------------------------
    mov esi, msg_capacity
    call puts
    mov eax, BLOCK_GET_CAPACITY
    xor ecx, ecx
    xor edx, edx
    call block_request
    mov ebx, eax
    mov eax, [RECV_BUF + 8]         ; the size in sectors
    call put_dec
    test ebx, ebx
    jnz .capacity_checked
    cmp dword [RECV_BUF + 8], 0
    setz bl                         ; EBX = 0 only if the status was 0 and the size non-zero
.capacity_checked:
    test ebx, ebx
    call check

    ; --- WRITE a pattern ---------------------------------------------------------------------------
    xor ecx, ecx
.fill:
    mov eax, ecx
    imul eax, eax, 13
    mov edx, ecx
    shr edx, 9                      ; the sector within the request
    add eax, edx
    mov [PATTERN + ecx], al
    inc ecx
    cmp ecx, BYTES
    jb .fill
    mov esi, msg_write
    call puts
    mov eax, BLOCK_WRITE
    mov ecx, SECTORS
    mov edx, FIRST
    call block_request
    call put_status
    test eax, eax
    call check

    ; --- READ it back ---------------------------------------------------------------------------
    mov esi, msg_read
    call puts
    mov eax, BLOCK_READ
    mov ecx, SECTORS
    mov edx, FIRST
    call block_request
    call put_status
    test eax, eax
    call check
    mov esi, msg_verify
    call puts
    mov esi, PATTERN
    mov edi, RECV_BUF + 16
    mov ecx, BYTES
    repe cmpsb
    setne bl                        ; BL = 1: a byte differed (the last one compared)
    mov eax, BYTES
    sub eax, ecx
    movzx edx, bl
    sub eax, edx                    ; the bytes that matched
    call put_dec
    test bl, bl
    call check

    ; --- READ past the end --------------------------------------------------------------------
    mov esi, msg_past_end
    call puts
    mov eax, BLOCK_READ
    mov ecx, 1
    mov edx, 0xfffffff0
    call block_request
    call put_status
    cmp eax, 2
    call check
    jmp finish

; block_request: EAX = op, ECX = count, EDX = sector (WRITE data already at PATTERN); sends it,
; waits for its completion; EAX = the reply's status (the reply is at RECV_BUF)
block_request:
    push ebx
    push ecx
    push edx
    push esi
    mov [REQ_BUF], eax
    mov [REQ_BUF + 4], ecx
    mov [REQ_BUF + 8], edx
    mov dword [REQ_BUF + 12], 0
    cmp eax, BLOCK_WRITE
    mov eax, 0
    jne .sized
    mov eax, ecx
    shl eax, 9                      ; the data travels inline
.sized:
    lea ecx, [eax + 16]
    inc dword [trans_id]
    mov edx, [trans_id]
    mov ebx, FLAG_COMPLETION
    mov esi, REQ_BUF
    call ring_send
    call ring_kick
    call ring_receive
    cmp ecx, VM_PKT_COMP
    jne .bad
    cmp edx, [trans_id]
    jne .bad
    mov eax, [RECV_BUF]
    pop esi
    pop edx
    pop ecx
    pop ebx
    ret
.bad:
    mov esi, msg_bad_completion
    jmp vmbus_fail

put_status:                         ; print ": status N" for EAX, keeping EAX and the flags' input
    push esi
    mov esi, msg_status_is
    call puts
    call put_dec
    pop esi
    ret

%include "lib.inc"
%include "vmbus.inc"

trans_id:   dd 0

block_class:                        ; 3a7e0c52-6f1d-4b8e-9c1a-5d2f7e6b4a02, Windows byte order
    db 0x52, 0x0c, 0x7e, 0x3a, 0x1d, 0x6f, 0x8e, 0x4b
    db 0x9c, 0x1a, 0x5d, 0x2f, 0x7e, 0x6b, 0x4a, 0x02

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

msg_title:          db "vmbus-block: SynIC, VMBus 4.0, the block channel", 10, 0
msg_open:           db "block channel open, relid ", 0
msg_capacity:       db "GET_CAPACITY: sectors = ", 0
msg_write:          db "WRITE 4 sectors at sector 8", 0
msg_read:           db "READ 4 sectors at sector 8", 0
msg_verify:         db "bytes read back equal to the pattern: ", 0
msg_past_end:       db "READ at sector 0xfffffff0 (past the end) refused", 0
msg_status_is:      db ": status ", 0
msg_bad_completion: db "the block device's completion is missing or for another request", 0
