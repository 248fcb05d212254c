/* entry.S: the assembly the C self-test kernel cannot do without (GNU as, AT&T syntax; built by
 * `gcc -m32 -c entry.S`).
 *
 *  - the Multiboot v1 header (Multiboot specification 0.6.96, section 3.1.1);
 *  - _start: a stack, our own GDT (the loader's GDTR "may be invalid", spec 3.2), then
 *    kmain(magic, info) with EAX and EBX as the loader left them;
 *  - 256 interrupt entry stubs, 16 bytes apart, that build one frame layout (struct frame in
 *    selftest.c) and call interrupt(frame).
 */

#define MULTIBOOT_MAGIC        0x1BADB002
#define MULTIBOOT_PAGE_ALIGN   (1 << 0)     /* modules on 4 KiB boundaries */
#define MULTIBOOT_MEMORY_INFO  (1 << 1)     /* mem_lower/mem_upper (and the memory map) */
#define MULTIBOOT_FLAGS        (MULTIBOOT_PAGE_ALIGN | MULTIBOOT_MEMORY_INFO)

#define KERNEL_CS 0x08
#define KERNEL_DS 0x10

        .section .multiboot, "a"
        .balign 4
        .long   MULTIBOOT_MAGIC
        .long   MULTIBOOT_FLAGS
        .long   -(MULTIBOOT_MAGIC + MULTIBOOT_FLAGS)  /* magic + flags + checksum == 0 */

        .text
        .globl  _start
_start:
        /* 32-bit protected mode, paging off, interrupts off; EAX = 0x2BADB002 and EBX = the
         * physical address of the Multiboot information. ESP is undefined: set it first. */
        movl    $stack_top, %esp
        movl    %eax, %esi
        lgdt    gdt_descriptor
        movw    $KERNEL_DS, %ax
        movw    %ax, %ds
        movw    %ax, %es
        movw    %ax, %fs
        movw    %ax, %gs
        movw    %ax, %ss
        ljmp    $KERNEL_CS, $1f                /* reload CS from our GDT */
1:      pushl   $0                              /* EFLAGS = 0: DF clear, as the C ABI wants */
        popfl
        pushl   %ebx                            /* kmain(magic, info) */
        pushl   %esi
        call    kmain
2:      cli                                     /* kmain never returns; if it did: stop */
        hlt
        jmp     2b

/* The interrupt entry stubs: stub n is at isr_stubs + 16 * n. The CPU pushes an error code for
 * vectors 8, 10-14 and 17 (Intel SDM Vol. 3A 6.13, Table 6-1); the others push a 0 in its
 * place so that every frame looks the same. */
        .balign 16
        .globl  isr_stubs
isr_stubs:
        .set    vector, 0
        .rept   256
        .balign 16
        .if     (vector == 8) || ((vector >= 10) && (vector <= 14)) || (vector == 17)
        .else
        pushl   $0                              /* no error code from the CPU: a 0 for it */
        .endif
        pushl   $vector
        jmp     isr_common
        .set    vector, vector + 1
        .endr

isr_common:
        pushal                                  /* EAX ECX EDX EBX ESP EBP ESI EDI */
        cld
        pushl   %esp                            /* interrupt(struct frame *) */
        call    interrupt
        addl    $4, %esp
        popal
        addl    $8, %esp                        /* the vector and the error code */
        iret

        .section .rodata
        .balign 8
gdt:    .quad   0                               /* the null descriptor */
        .quad   0x00CF9A000000FFFF              /* 0x08: code, base 0, limit 4 GiB, DPL 0 */
        .quad   0x00CF92000000FFFF              /* 0x10: data, base 0, limit 4 GiB, DPL 0 */
gdt_end:
gdt_descriptor:
        .word   gdt_end - gdt - 1
        .long   gdt

        .bss
        .balign 16
        .space  16384
stack_top:

        .section .note.GNU-stack, "", @progbits /* no executable stack needed */
