; exits32: 32-bit protected-mode exit-cost loops for `trapvisor bench` (benchmarks/traps.py)
;
; Boots like guests/pmode.asm (flat ring-0 GDT, CR0.PE, far jump), then runs one loop of
; `iterations` passes at guest ring 0, chosen by `variant`:
;   0  empty      dec ecx / jnz only
;   1  out        out 0x80, al      -> IO_INSTRUCTION exit
;   2  cli        cli               (ring 1 under the trap engine: IOPL 0 -> #GP -> emulate)
;   3  cpuid      cpuid             (bare-CPU floor of a CPUID exit: the CPUID hook; ECX kept in EBP)
;   4  int 0x80   int 0x80          (bare-CPU floor of a software interrupt: the INTR hook only;
;                                    no IDT here, so only a bare CPU with a hook can run it)
; `entry32` holds the address of the 32-bit part, so the benchmark can start a bare CPU there
; with its own flat segments at CPL 3. benchmarks/traps.py and the bare-Unicorn
; floors (benchmarks/loops.py) patch the dwords after "BNCH".

bits 16
org 0x7c00

KERNEL_CS   equ 0x08
KERNEL_DS   equ 0x10
STACK_TOP   equ 0x90000
DEBUG_EXIT  equ 0xf4
POST_PORT   equ 0x80

start:
    jmp main

align 4
params:
    db "BNCH"
iterations: dd 100000
variant:    dd 2
entry32:    dd bench32

main:
    cli
    xor ax, ax
    mov ds, ax
    lgdt [gdt_descriptor]
    mov eax, cr0
    or eax, 1                   ; CR0.PE
    mov cr0, eax
    jmp dword KERNEL_CS:protected_mode

bits 32
protected_mode:
    mov ax, KERNEL_DS
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov esp, STACK_TOP

bench32:
    mov ecx, [iterations]
    mov eax, [variant]
    cmp eax, 1
    je out_loop
    cmp eax, 2
    je cli_loop
    cmp eax, 3
    je cpuid_loop
    cmp eax, 4
    je int_loop

empty_loop:
    dec ecx
    jnz empty_loop
    jmp done

out_loop:
    out POST_PORT, al
    dec ecx
    jnz out_loop
    jmp done

cli_loop:
    cli
    dec ecx
    jnz cli_loop
    jmp done

cpuid_loop:
    mov ebp, ecx
.next:
    xor eax, eax
    cpuid
    dec ebp
    jnz .next
    xor ecx, ecx
    jmp done

int_loop:
    int 0x80
    dec ecx
    jnz int_loop

done:
    xor al, al
    out DEBUG_EXIT, al
    hlt

align 8
gdt:
    dq 0                        ; 0x00: null
    dw 0xffff, 0x0000           ; 0x08: code, base 0, limit 4 GiB, 32-bit, DPL 0, execute/read
    db 0x00, 0x9a, 0xcf, 0x00
    dw 0xffff, 0x0000           ; 0x10: data, base 0, limit 4 GiB, 32-bit, DPL 0, read/write
    db 0x00, 0x92, 0xcf, 0x00
gdt_end:

gdt_descriptor:
    dw gdt_end - gdt - 1
    dd gdt
