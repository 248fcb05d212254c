/* selftest.c: a Multiboot v1 kernel in C that checks the PC it boots on, one line per check.
 *
 * It checks, in this order:
 *   1. the Multiboot hand-over: EAX magic, the information flags, mem_lower/mem_upper, the
 *      memory map, the command line and one module (contents and string);
 *   2. the local APIC at 0xFEE00000: CPUID and IA32_APIC_BASE, ID, version, software enable,
 *      the timer one-shot and then periodic, ISR and EOI;
 *   3. the I/O APIC at 0xFEC00000: version, redirection entries, the PIT's IRQ 0 (I/O APIC pin 2
 *      on a PC) delivered as an interrupt;
 *   4. the primary IDE master: software reset signature, IDENTIFY DEVICE, READ SECTORS (LBA28)
 *      by polling and with IRQ 14 through the I/O APIC, and a read past the end.
 * Each check prints "PASS name" or "FAIL name: detail" on COM1; the run ends with a summary line
 * and a write of the status (0: all passed, 1: something failed) to port 0xF4, QEMU's
 * isa-debug-exit (QEMU exits with (status << 1) | 1; trapvisor exits with the status).
 *
 * The output never depends on timing: a check that counts interrupts passes once the count is
 * reached, and interrupts are taken only at the `sti; hlt` of wait_for(), so how fast the timers
 * run (QEMU's APIC timer follows the host clock, trapvisor's follows retired instructions) changes
 * how long the run takes, never what it prints. "verbose=1" on the command line adds INFO lines
 * with the raw values (those do differ between machines).
 *
 * Build: gcc -m32 -ffreestanding -fno-pic -fno-stack-protector -nostdlib -O2 ... (tests/ckernel.py)
 * References: Intel SDM Vol. 3A (ch. 6 interrupts, ch. 11 APIC), Intel 82093AA I/O APIC
 * datasheet, Intel 8254 datasheet, ATA/ATAPI-6 (T13/1410D), Multiboot specification 0.6.96.
 */
#include <stdarg.h>
#include <stdint.h>

/* ----- what the test harness prepares (tests/ckernel.py writes the same) ----------------- */
#define EXPECTED_SELFTEST "1"               /* -append "selftest=1 name=trapvisor" */
#define EXPECTED_NAME "trapvisor"
#define MODULE_ARGS "selftest-module"       /* -initrd "mod.bin selftest-module" */
#define MODULE_MAGIC "trapvisor module"     /* the module's first 16 bytes ... */
#define MODULE_SIZE 3000                    /* ... then byte i is (i * 7 + 3) & 0xFF */
#define DISK_SECTORS 2048                   /* 1 MiB: sector s holds s (32-bit LE), then */
                                            /* byte i (4..511) is (s + i) & 0xFF */

/* Our interrupt vectors. Vectors 0-31 are the CPU's exceptions (SDM Vol. 3A 6.3.1). */
#define VEC_APIC_TIMER 0x40
#define VEC_PIT 0x41
#define VEC_IDE 0x42
#define VEC_MASKED_PIN 0x50                 /* + pin: entries we leave masked */
#define VEC_SPURIOUS 0xFF                   /* the LAPIC's spurious vector (SVR) */

/* ----- the few library functions gcc may call even in freestanding code ---------------- */
void *memset(void *dst, int c, unsigned n)
{
    unsigned char *d = dst;
    while (n--)
        *d++ = (unsigned char)c;
    return dst;
}

void *memcpy(void *dst, const void *src, unsigned n)
{
    unsigned char *d = dst;
    const unsigned char *s = src;
    while (n--)
        *d++ = *s++;
    return dst;
}

static int streq(const char *a, const char *b, unsigned n)   /* a[0..n) == NUL-ended b */
{
    unsigned i;
    for (i = 0; i < n; i++)
        if (a[i] != b[i] || !b[i])
            return 0;
    return b[n] == 0;
}

/* ----- port I/O and memory-mapped registers ----------------------------------------------- */
static inline void outb(uint16_t port, uint8_t v)
{
    __asm__ volatile("outb %0, %1" :: "a"(v), "Nd"(port));
}

static inline void outl(uint16_t port, uint32_t v)
{
    __asm__ volatile("outl %0, %1" :: "a"(v), "Nd"(port));
}

static inline uint8_t inb(uint16_t port)
{
    uint8_t v;
    __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port));
    return v;
}

/* Read `words` 16-bit words from an I/O port into memory: REP INSW. */
static inline void insw(uint16_t port, void *buf, unsigned words)
{
    __asm__ volatile("rep insw" : "+D"(buf), "+c"(words) : "d"(port) : "memory");
}

/* One 32-bit MOV per device register access, like Linux's readl/writel: the APIC registers
 * must be accessed as aligned dwords (SDM Vol. 3A 11.4.1), and a compiler left to itself may
 * merge, split or widen accesses to ordinary memory. */
static inline uint32_t mmio_read(uintptr_t addr)
{
    uint32_t v;
    __asm__ volatile("movl (%1), %0" : "=r"(v) : "r"(addr) : "memory");
    return v;
}

static inline void mmio_write(uintptr_t addr, uint32_t v)
{
    __asm__ volatile("movl %0, (%1)" :: "r"(v), "r"(addr) : "memory");
}

static inline void cpuid(uint32_t leaf, uint32_t r[4])
{
    __asm__ volatile("cpuid" : "=a"(r[0]), "=b"(r[1]), "=c"(r[2]), "=d"(r[3]) : "a"(leaf), "c"(0));
}

static inline uint64_t rdmsr(uint32_t msr)
{
    uint32_t lo, hi;
    __asm__ volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(msr));
    return (uint64_t)hi << 32 | lo;
}

/* ----- COM1: a polled 16550 (National Semiconductor PC16550D datasheet) ------------------ */
#define COM1 0x3F8
enum { UART_THR = 0, UART_IER = 1, UART_DLL = 0, UART_DLM = 1, UART_FCR = 2, UART_LCR = 3,
       UART_MCR = 4, UART_LSR = 5 };
#define LSR_THRE 0x20                       /* transmitter holding register empty */

static void serial_init(void)
{
    outb(COM1 + UART_IER, 0x00);            /* no UART interrupts: we poll */
    outb(COM1 + UART_LCR, 0x80);            /* DLAB = 1: ports 0/1 are the divisor latch */
    outb(COM1 + UART_DLL, 1);               /* 115200 baud */
    outb(COM1 + UART_DLM, 0);
    outb(COM1 + UART_LCR, 0x03);            /* DLAB = 0, 8 data bits, no parity, 1 stop bit */
    outb(COM1 + UART_FCR, 0x07);            /* FIFOs on and cleared */
    outb(COM1 + UART_MCR, 0x03);            /* DTR, RTS */
}

static void putc_serial(char c)
{
    while (!(inb(COM1 + UART_LSR) & LSR_THRE))
        ;
    outb(COM1 + UART_THR, (uint8_t)c);
}

/* A tiny printf: %s %c %u %x, with an optional zero-padded width (%08x). */
static void print_number(uint32_t v, unsigned base, int width)
{
    char digits[12];
    int n = 0;
    do {
        digits[n++] = "0123456789abcdef"[v % base];
        v /= base;
    } while (v);
    while (width-- > n)
        putc_serial('0');
    while (n)
        putc_serial(digits[--n]);
}

static void kvprintf(const char *fmt, va_list ap)
{
    for (; *fmt; fmt++) {
        if (*fmt != '%') {
            putc_serial(*fmt);
            continue;
        }
        int width = 0;
        while (*++fmt >= '0' && *fmt <= '9')
            width = width * 10 + (*fmt - '0');
        switch (*fmt) {
        case 's': {
            const char *s = va_arg(ap, const char *);
            while (*s)
                putc_serial(*s++);
            break;
        }
        case 'c': putc_serial((char)va_arg(ap, int)); break;
        case 'u': print_number(va_arg(ap, uint32_t), 10, width); break;
        case 'x': print_number(va_arg(ap, uint32_t), 16, width); break;
        default: putc_serial('%'); putc_serial(*fmt); break;
        }
    }
}

static void kprintf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    kvprintf(fmt, ap);
    va_end(ap);
}

/* ----- reporting ------------------------------------------------------------------------- */
static unsigned passed, failed;
static int verbose;

static void check(int ok, const char *name, const char *fmt, ...)
{
    if (ok) {
        passed++;
        kprintf("PASS %s\n", name);
        return;
    }
    failed++;
    kprintf("FAIL %s: ", name);
    va_list ap;
    va_start(ap, fmt);
    kvprintf(fmt, ap);
    va_end(ap);
    kprintf("\n");
}

static void info(const char *fmt, ...)      /* only with verbose=1: raw, machine-specific values */
{
    if (!verbose)
        return;
    kprintf("INFO ");
    va_list ap;
    va_start(ap, fmt);
    kvprintf(fmt, ap);
    va_end(ap);
    kprintf("\n");
}

static __attribute__((noreturn)) void finish(void)
{
    if (failed)
        kprintf("DONE: %u passed, %u failed\n", passed, failed);
    else
        kprintf("DONE: all %u checks passed\n", passed);
    outl(0xF4, failed ? 1 : 0);             /* isa-debug-exit: the run ends here */
    for (;;)                                /* no debug-exit device: stop */
        __asm__ volatile("cli; hlt");
}

/* ----- interrupts: the IDT (SDM Vol. 3A 6.10-6.11) and the handler ---------------------- */
struct idt_gate {
    uint16_t offset_low, selector;
    uint8_t zero, type;                     /* 0x8E: present, DPL 0, 32-bit interrupt gate */
    uint16_t offset_high;
} __attribute__((packed));

struct frame {                              /* what entry.S's isr_common leaves on the stack */
    uint32_t edi, esi, ebp, esp, ebx, edx, ecx, eax;   /* PUSHAD */
    uint32_t vector, error;                 /* the stub's; error is 0 if the CPU pushes none */
    uint32_t eip, cs, eflags;               /* the CPU's (no privilege change: no SS:ESP) */
};

extern char isr_stubs[];                    /* entry.S: 256 stubs, 16 bytes apart */
static struct idt_gate idt[256];

static void idt_init(void)
{
    for (int v = 0; v < 256; v++) {
        uint32_t stub = (uint32_t)(uintptr_t)isr_stubs + 16 * v;
        idt[v] = (struct idt_gate){ stub & 0xFFFF, 0x08, 0, 0x8E, stub >> 16 };
    }
    struct { uint16_t limit; uint32_t base; } __attribute__((packed)) idtr =
        { sizeof idt - 1, (uint32_t)(uintptr_t)idt };
    __asm__ volatile("lidt %0" :: "m"(idtr));
}

/* Counters the handler updates and the tests wait on. */
static volatile unsigned apic_timer_irqs, pit_irqs, ide_irqs, spurious_irqs, unexpected_irqs;
static volatile unsigned unexpected_vector;
static volatile int isr_bit_in_handler, isr_bit_after_eoi = -1;
static volatile uint8_t ide_status_in_irq;
static volatile uint32_t apic_count_at_pit[4];     /* verbose=1: the APIC timer against the PIT */

/* Take interrupts until *counter reaches target. STI delays interrupts by one instruction
 * (SDM Vol. 3A 6.8.3), so "sti; hlt" cannot lose an interrupt between the test and the HLT;
 * everywhere else the kernel runs with interrupts off, so they arrive only here. */
static void wait_for(volatile unsigned *counter, unsigned target)
{
    while (*counter < target)
        __asm__ volatile("sti; hlt; cli" ::: "memory");
}

/* ----- the local APIC (SDM Vol. 3A ch. 11; registers: Table 11-1) ------------------------- */
#define LAPIC_BASE 0xFEE00000u
enum { LAPIC_ID = 0x020, LAPIC_VERSION = 0x030, LAPIC_TPR = 0x080, LAPIC_EOI = 0x0B0,
       LAPIC_SVR = 0x0F0, LAPIC_ISR = 0x100, LAPIC_ESR = 0x280, LAPIC_LVT_TIMER = 0x320,
       LAPIC_LVT_LINT0 = 0x350, LAPIC_LVT_LINT1 = 0x360, LAPIC_LVT_ERROR = 0x370,
       LAPIC_TIMER_INITIAL = 0x380, LAPIC_TIMER_CURRENT = 0x390, LAPIC_TIMER_DIVIDE = 0x3E0 };
#define LVT_MASKED (1u << 16)
#define LVT_TIMER_PERIODIC (1u << 17)       /* timer mode 01 (Figure 11-8) */
#define SVR_APIC_ENABLE (1u << 8)           /* APIC software enable (11.4.7.2) */
#define IA32_APIC_BASE 0x1B                 /* MSR: base address, BSP flag (8), enable (11) */
#define DIVIDE_BY_16 0x3                    /* Divide Configuration Register, Figure 11-10 */
#define DIVIDE_BY_4 0x1

static uint32_t lapic_read(uint32_t reg) { return mmio_read(LAPIC_BASE + reg); }
static void lapic_write(uint32_t reg, uint32_t v) { mmio_write(LAPIC_BASE + reg, v); }

/* Is `vector` in service? The ISR is eight 32-bit registers 0x10 apart (11.8.4). */
static int lapic_in_service(unsigned vector)
{
    return lapic_read(LAPIC_ISR + 0x10 * (vector / 32)) >> (vector % 32) & 1;
}

/* End of interrupt: clears the highest ISR bit; must be a write of 0 (11.8.5). */
static void lapic_eoi(void) { lapic_write(LAPIC_EOI, 0); }

void interrupt(struct frame *f)
{
    switch (f->vector) {
    case VEC_APIC_TIMER:
        apic_timer_irqs++;
        isr_bit_in_handler = lapic_in_service(VEC_APIC_TIMER);
        lapic_eoi();
        isr_bit_after_eoi = lapic_in_service(VEC_APIC_TIMER);
        break;
    case VEC_PIT:
        if (pit_irqs < 4)
            apic_count_at_pit[pit_irqs] = lapic_read(LAPIC_TIMER_CURRENT);
        pit_irqs++;
        lapic_eoi();
        break;
    case VEC_IDE:
        ide_status_in_irq = inb(0x1F7);     /* reading Status lowers INTRQ (ATA-6 5.2.13) */
        ide_irqs++;
        lapic_eoi();
        break;
    case VEC_SPURIOUS:                      /* no EOI for the spurious vector (11.9) */
        spurious_irqs++;
        break;
    default:
        if (f->vector < 32) {
            check(0, "exception", "vector %u, error code %x, at %x:%x", f->vector, f->error,
                  f->cs, f->eip);
            finish();
        }
        unexpected_irqs++;
        unexpected_vector = f->vector;
        break;
    }
}

/* ----- the 8259A pair: remapped off the exception vectors, then masked -------------------- */
static void pic_disable(void)
{
    /* ICW1-ICW4 (8259A datasheet): edge triggered, cascaded, vectors 0x20-0x2F, so that even a
     * spurious IRQ 7/15 cannot look like a CPU exception; then mask every line (OCW1). */
    outb(0x20, 0x11); outb(0x21, 0x20); outb(0x21, 0x04); outb(0x21, 0x01);
    outb(0xA0, 0x11); outb(0xA1, 0x28); outb(0xA1, 0x02); outb(0xA1, 0x01);
    outb(0x21, 0xFF);
    outb(0xA1, 0xFF);
}

/* ----- 1. the Multiboot hand-over (Multiboot specification 0.6.96, 3.2 and 3.3) ---------- */
#define MULTIBOOT_BOOTLOADER_MAGIC 0x2BADB002
#define MBI_MEMORY (1u << 0)
#define MBI_CMDLINE (1u << 2)
#define MBI_MODS (1u << 3)
#define MBI_MMAP (1u << 6)

struct multiboot_info {
    uint32_t flags, mem_lower, mem_upper, boot_device, cmdline, mods_count, mods_addr;
    uint32_t syms[4];
    uint32_t mmap_length, mmap_addr;
};

struct multiboot_module { uint32_t mod_start, mod_end, string, reserved; };

struct multiboot_mmap_entry {               /* `size` does not count itself */
    uint32_t size;
    uint64_t base, length;
    uint32_t type;                          /* 1: available RAM */
} __attribute__((packed));

extern char _start[], _end[];               /* selftest.ld: the kernel's first and last byte */

/* The command line is "KERNEL-PATH ARGS" (QEMU and GRUB put the kernel's name first). Find
 * "key=" among the words after the first; return its value's length, or -1 if absent. */
static int cmdline_value(const char *cmdline, const char *key, const char **value)
{
    const char *p = cmdline;
    while (*p && *p != ' ')                 /* skip the kernel's path */
        p++;
    while (*p) {
        while (*p == ' ')
            p++;
        const char *word = p, *k = key;
        while (*p && *p != ' ')
            p++;
        const char *w = word;
        while (*k && w < p && *w == *k)
            w++, k++;
        if (!*k && w < p && *w == '=') {
            *value = w + 1;
            return (int)(p - w - 1);
        }
    }
    return -1;
}

/* The words after the first of a Multiboot string ("PATH ARGS"), or "" if there are none. */
static const char *after_first_word(const char *s)
{
    while (*s && *s != ' ')
        s++;
    while (*s == ' ')
        s++;
    return s;
}

static uint8_t module_byte(unsigned i)
{
    return i < 16 ? (uint8_t)MODULE_MAGIC[i] : (uint8_t)(i * 7 + 3);
}

static void check_multiboot(uint32_t magic, const struct multiboot_info *mbi)
{
    check(magic == MULTIBOOT_BOOTLOADER_MAGIC, "multiboot-magic", "EAX = %x", magic);
    if (magic != MULTIBOOT_BOOTLOADER_MAGIC)
        return;                             /* then EBX means nothing */
    const char *cmdline = (const char *)(uintptr_t)mbi->cmdline, *value = "";
    int n = cmdline_value(cmdline, "verbose", &value);
    verbose = n == 1 && value[0] == '1';

    uint32_t want = MBI_MEMORY | MBI_CMDLINE | MBI_MODS | MBI_MMAP;
    check((mbi->flags & want) == want, "multiboot-flags", "flags %x lack %x", mbi->flags,
          want & ~mbi->flags);
    info("multiboot flags %x mem_lower %u KiB mem_upper %u KiB boot_device %x", mbi->flags,
         mbi->mem_lower, mbi->mem_upper, mbi->boot_device);

    /* mem_lower: KiB below 640 KiB; mem_upper: KiB from 1 MiB to the first hole (3.3). The
     * kernel and its module must lie inside what the loader says is there. */
    uint32_t top = 0x100000 + mbi->mem_upper * 1024;
    check(mbi->mem_lower >= 512 && mbi->mem_lower <= 640 && top >= (uint32_t)(uintptr_t)_end
          + 0x10000, "multiboot-memory", "mem_lower %u KiB, mem_upper %u KiB", mbi->mem_lower,
          mbi->mem_upper);

    /* The memory map: some available entry must cover the kernel. */
    int covered = 0;
    uint32_t at = mbi->mmap_addr, end = mbi->mmap_addr + mbi->mmap_length;
    while (at < end) {
        const struct multiboot_mmap_entry *e = (const void *)(uintptr_t)at;
        info("mmap %08x%08x +%08x%08x type %u", (uint32_t)(e->base >> 32), (uint32_t)e->base,
             (uint32_t)(e->length >> 32), (uint32_t)e->length, e->type);
        if (e->type == 1 && e->base <= (uintptr_t)_start
            && e->base + e->length >= (uintptr_t)_end)
            covered = 1;
        at += e->size + 4;
    }
    check(covered, "multiboot-mmap", "no available range covers the kernel %x-%x",
          (uint32_t)(uintptr_t)_start, (uint32_t)(uintptr_t)_end);

    /* The command line. */
    info("cmdline \"%s\"", cmdline);
    n = cmdline_value(cmdline, "selftest", &value);
    int ok = n >= 0 && streq(value, EXPECTED_SELFTEST, (unsigned)n);
    n = cmdline_value(cmdline, "name", &value);
    ok = ok && n >= 0 && streq(value, EXPECTED_NAME, (unsigned)n);
    check(ok, "cmdline", "\"%s\" lacks selftest=" EXPECTED_SELFTEST " name=" EXPECTED_NAME,
          cmdline);

    /* The module: one, page aligned (we asked for it: header flag 0), with the known bytes. */
    const struct multiboot_module *mod = (const void *)(uintptr_t)mbi->mods_addr;
    if (!(mbi->flags & MBI_MODS) || mbi->mods_count != 1) {
        check(0, "module", "%u modules, expected 1", mbi->mods_count);
        return;
    }
    const uint8_t *data = (const uint8_t *)(uintptr_t)mod->mod_start;
    uint32_t size = mod->mod_end - mod->mod_start;
    info("module %x-%x \"%s\"", mod->mod_start, mod->mod_end, (const char *)(uintptr_t)mod->string);
    unsigned bad = 0, first_bad = 0;
    for (unsigned i = 0; size == MODULE_SIZE && i < size; i++)
        if (data[i] != module_byte(i) && !bad++)
            first_bad = i;
    check(size == MODULE_SIZE && !bad && !(mod->mod_start & 0xFFF), "module",
          "%x-%x: %u bytes, %u wrong (first at %u)", mod->mod_start, mod->mod_end, size, bad,
          first_bad);
    const char *args = after_first_word((const char *)(uintptr_t)mod->string);
    check(streq(args, MODULE_ARGS, sizeof MODULE_ARGS - 1), "module-string",
          "\"%s\", expected \"PATH " MODULE_ARGS "\"", (const char *)(uintptr_t)mod->string);
}

/* ----- 2. the local APIC ------------------------------------------------------------------ */
static uint32_t lapic_id;

static void check_lapic(void)
{
    /* CPUID.1: EDX bit 9 says there is an APIC, EBX[31:24] is the initial APIC ID (SDM 11.4.2). */
    uint32_t r[4];
    cpuid(1, r);
    check(r[3] >> 9 & 1, "lapic-cpuid", "CPUID.1:EDX = %x has no APIC bit", r[3]);

    /* IA32_APIC_BASE (11.4.4): the registers at 0xFEE00000, enabled, we are the BSP. */
    uint32_t base = (uint32_t)rdmsr(IA32_APIC_BASE);
    info("IA32_APIC_BASE %x", base);
    check((base & 0xFFFFF000) == LAPIC_BASE && base >> 11 & 1 && base >> 8 & 1, "lapic-msr",
          "IA32_APIC_BASE = %x", base);

    lapic_id = lapic_read(LAPIC_ID) >> 24;
    uint32_t version = lapic_read(LAPIC_VERSION);
    info("lapic id %u version %x (initial APIC ID %u)", lapic_id, version, r[1] >> 24);
    check(lapic_id == r[1] >> 24, "lapic-id", "ID register %u, CPUID initial APIC ID %u",
          lapic_id, r[1] >> 24);
    /* Version (11.4.8): 0x10-0x15 is an integrated APIC; bits 23:16 are the last LVT entry. */
    check((version & 0xFF) >= 0x10 && (version & 0xFF) <= 0x15 && (version >> 16 & 0xFF) >= 4,
          "lapic-version", "version register %x", version);

    /* Enable: spurious vector 0xFF with the software-enable bit; accept every priority (TPR 0);
     * LINT0 (where the 8259 is wired, ExtINT) and LINT1 masked: all interrupts now come
     * through the I/O APIC or from the APIC itself. */
    lapic_write(LAPIC_SVR, SVR_APIC_ENABLE | VEC_SPURIOUS);
    lapic_write(LAPIC_TPR, 0);
    lapic_write(LAPIC_LVT_LINT0, LVT_MASKED);
    lapic_write(LAPIC_LVT_LINT1, LVT_MASKED);
    lapic_write(LAPIC_LVT_ERROR, LVT_MASKED);
    lapic_write(LAPIC_ESR, 0);              /* a write latches the errors, the read shows them */
    uint32_t svr = lapic_read(LAPIC_SVR), esr = lapic_read(LAPIC_ESR);
    check((svr & 0x1FF) == (SVR_APIC_ENABLE | VEC_SPURIOUS) && esr == 0, "lapic-enable",
          "SVR = %x, ESR = %x", svr, esr);

    /* The timer (11.5.4) counts down from the initial count at the bus clock divided by the
     * Divide Configuration; LVT timer mode 00 is one-shot: one interrupt at 0, then it stays 0.
     * The count is read back while running (somewhere in (0, initial]) and after the interrupt.
     * 1,000,000 bus clocks / 16: 16 ms on QEMU (1 GHz bus clock in host time), 16 M
     * instructions of virtual time on trapvisor (1 ns each), both skipped by HLT. */
    lapic_write(LAPIC_TIMER_DIVIDE, DIVIDE_BY_16);
    lapic_write(LAPIC_LVT_TIMER, VEC_APIC_TIMER);
    lapic_write(LAPIC_TIMER_INITIAL, 1000000);
    uint32_t running = lapic_read(LAPIC_TIMER_CURRENT);
    wait_for(&apic_timer_irqs, 1);
    uint32_t after = lapic_read(LAPIC_TIMER_CURRENT), divide = lapic_read(LAPIC_TIMER_DIVIDE);
    check(running > 0 && running <= 1000000 && after == 0 && divide == DIVIDE_BY_16,
          "lapic-timer-oneshot", "current count %u while running, %u after; divide %x",
          running, after, divide);

    /* In the handler the vector was in service (ISR); our EOI cleared it (11.8.4-5). */
    check(isr_bit_in_handler == 1 && isr_bit_after_eoi == 0, "lapic-eoi",
          "ISR bit %d in the handler, %d after EOI", isr_bit_in_handler, isr_bit_after_eoi);

    /* Periodic (mode 01), divide by 4: the count reloads from the initial count at 0, so after
     * ten interrupts it is still counting (QEMU may show 0 for an instant at the reload: one
     * of three reads is enough). */
    lapic_write(LAPIC_TIMER_DIVIDE, DIVIDE_BY_4);
    lapic_write(LAPIC_LVT_TIMER, LVT_TIMER_PERIODIC | VEC_APIC_TIMER);
    lapic_write(LAPIC_TIMER_INITIAL, 25000);
    wait_for(&apic_timer_irqs, 1 + 10);
    uint32_t reloaded = 0;
    for (int i = 0; i < 3 && !reloaded; i++)
        reloaded = lapic_read(LAPIC_TIMER_CURRENT);
    uint32_t lvt = lapic_read(LAPIC_LVT_TIMER);
    lapic_write(LAPIC_LVT_TIMER, LVT_MASKED | VEC_APIC_TIMER);   /* stop it */
    lapic_write(LAPIC_TIMER_INITIAL, 0);
    check(reloaded > 0 && reloaded <= 25000
          && (lvt & 0x700FF) == (LVT_TIMER_PERIODIC | VEC_APIC_TIMER),
          "lapic-timer-periodic", "current count %u after 10 periods, LVT timer %x", reloaded,
          lvt);
}

/* ----- 3. the I/O APIC (82093AA datasheet, 3.2) -------------------------------------------- */
#define IOAPIC_BASE 0xFEC00000u
enum { IOAPIC_REGSEL = 0x00, IOAPIC_WINDOW = 0x10 };         /* the indirect register window */
enum { IOAPIC_ID = 0x00, IOAPIC_VER = 0x01, IOAPIC_REDTBL = 0x10 };   /* entry n: 0x10 + 2n */
#define RTE_MASKED (1u << 16)               /* 0: fixed delivery, physical, edge, active high */

static uint32_t ioapic_read(uint32_t reg)
{
    mmio_write(IOAPIC_BASE + IOAPIC_REGSEL, reg);
    return mmio_read(IOAPIC_BASE + IOAPIC_WINDOW);
}

static void ioapic_write(uint32_t reg, uint32_t v)
{
    mmio_write(IOAPIC_BASE + IOAPIC_REGSEL, reg);
    mmio_write(IOAPIC_BASE + IOAPIC_WINDOW, v);
}

/* Send input `pin` as `vector` to our local APIC (destination: its ID, bits 63:56). */
static void ioapic_route(unsigned pin, unsigned vector, int masked)
{
    ioapic_write(IOAPIC_REDTBL + 2 * pin + 1, lapic_id << 24);
    ioapic_write(IOAPIC_REDTBL + 2 * pin, vector | (masked ? RTE_MASKED : 0));
}

/* The 8254 PIT, channel 0, feeds ISA IRQ 0 (8254 datasheet; 1.193182 MHz input). */
#define PIT_CHANNEL0 0x40
#define PIT_COMMAND 0x43

static void check_ioapic(void)
{
    uint32_t version = ioapic_read(IOAPIC_VER);
    unsigned max_entry = version >> 16 & 0xFF;
    info("ioapic id %u version %x", ioapic_read(IOAPIC_ID) >> 24 & 0xF, version);
    /* Version 0x11 is the 82093AA; chipsets (and QEMU's default) say 0x20. A PC has 24 pins. */
    check(((version & 0xFF) == 0x11 || (version & 0xFF) == 0x20) && max_entry >= 15,
          "ioapic-version", "version register %x", version);

    /* Every entry masked first, as an OS does before routing anything. */
    for (unsigned pin = 0; pin <= max_entry; pin++)
        ioapic_route(pin, VEC_MASKED_PIN + pin, 1);
    uint32_t low = ioapic_read(IOAPIC_REDTBL + 2 * 2);
    uint32_t high = ioapic_read(IOAPIC_REDTBL + 2 * 2 + 1);
    /* Delivery status (12) and remote IRR (14) are read-only status bits. */
    check((low & ~(1u << 12 | 1u << 14)) == (RTE_MASKED | (VEC_MASKED_PIN + 2))
          && high == lapic_id << 24, "ioapic-redirection", "entry 2 reads %x:%x", high, low);

    /* The PIT: channel 0, mode 2 (rate generator), about 1 kHz. On a PC the PIT's ISA IRQ 0
     * reaches the I/O APIC on pin 2, not pin 0 (the MP table and ACPI describe this as an
     * interrupt source override). */
    outb(PIT_COMMAND, 0x34);                /* channel 0, lobyte/hibyte, mode 2, binary */
    outb(PIT_CHANNEL0, 1193 & 0xFF);
    outb(PIT_CHANNEL0, 1193 >> 8);
    /* Meanwhile the APIC timer counts down, masked, at the bus clock (divide by 1), so that
     * verbose=1 can show how fast it runs against the PIT's 1193 clocks (1.0 ms). */
    lapic_write(LAPIC_TIMER_DIVIDE, 0xB);
    lapic_write(LAPIC_LVT_TIMER, LVT_MASKED | VEC_APIC_TIMER);
    lapic_write(LAPIC_TIMER_INITIAL, 0xFFFFFFFF);
    ioapic_route(2, VEC_PIT, 0);
    wait_for(&pit_irqs, 3);
    ioapic_route(2, VEC_MASKED_PIN + 2, 1);
    outb(PIT_COMMAND, 0x30);                /* mode 0, no count written: channel 0 stops */
    lapic_write(LAPIC_TIMER_INITIAL, 0);
    info("apic timer: %u bus clocks in 2 PIT periods of 1193 clocks (1.9997 ms)",
         apic_count_at_pit[0] - apic_count_at_pit[2]);
    check(pit_irqs >= 3, "ioapic-pit-irq0-pin2", "%u interrupts", pit_irqs);
}

/* ----- 4. the primary IDE channel (ATA/ATAPI-6, T13/1410D) -------------------------------- */
enum { ATA_DATA = 0x1F0, ATA_ERROR = 0x1F1, ATA_COUNT = 0x1F2, ATA_LBA_LOW = 0x1F3,
       ATA_LBA_MID = 0x1F4, ATA_LBA_HIGH = 0x1F5, ATA_DEVICE = 0x1F6, ATA_STATUS = 0x1F7,
       ATA_COMMAND = 0x1F7, ATA_ALT_STATUS = 0x3F6, ATA_CONTROL = 0x3F6 };
#define ATA_BSY 0x80
#define ATA_DRDY 0x40
#define ATA_DF 0x20
#define ATA_DRQ 0x08
#define ATA_ERR 0x01
#define ATA_NIEN 0x02                       /* device control: no interrupts (INTRQ off) */
#define ATA_SRST 0x04                       /* device control: software reset */
#define ATA_LBA 0x40                        /* device register: LBA addressing */
#define ATA_ERROR_ABRT 0x04
#define ATA_ERROR_IDNF 0x10
#define ATA_CMD_READ_SECTORS 0x20
#define ATA_CMD_IDENTIFY 0xEC

/* The device may take 400 ns to show a new status after a command (ATA-6 9.x); four reads of
 * Alternate Status (which, unlike Status, leaves INTRQ alone) take at least that long. */
static void ata_delay_400ns(void)
{
    for (int i = 0; i < 4; i++)
        inb(ATA_ALT_STATUS);
}

/* Poll until BSY clears; return the status (0xFF if it never does). */
static uint8_t ata_wait_not_busy(void)
{
    for (unsigned tries = 0; tries < 1000000; tries++) {
        uint8_t status = inb(ATA_ALT_STATUS);
        if (!(status & ATA_BSY))
            return status;
    }
    return 0xFF;
}

static void ata_command(uint32_t lba, uint8_t count, uint8_t command)
{
    outb(ATA_DEVICE, ATA_LBA | (lba >> 24 & 0x0F));  /* device 0 (master), LBA 27:24 */
    ata_delay_400ns();
    ata_wait_not_busy();
    outb(ATA_COUNT, count);
    outb(ATA_LBA_LOW, lba & 0xFF);
    outb(ATA_LBA_MID, lba >> 8 & 0xFF);
    outb(ATA_LBA_HIGH, lba >> 16 & 0xFF);
    outb(ATA_COMMAND, command);
    ata_delay_400ns();
}

static uint16_t sector[2][256];

static int sector_ok(const uint16_t *words, uint32_t lba)
{
    const uint8_t *b = (const uint8_t *)words;
    if ((uint32_t)(b[0] | b[1] << 8 | b[2] << 16 | (uint32_t)b[3] << 24) != lba)
        return 0;
    for (unsigned i = 4; i < 512; i++)
        if (b[i] != (uint8_t)(lba + i))
            return 0;
    return 1;
}

/* PIO data-in, polled (ATA-6 9.7): per sector wait for BSY = 0 and DRQ = 1, then read 256
 * words from the data port. Returns the last status, or 0 if every sector came. */
static uint8_t ata_read_polled(uint32_t lba, unsigned count, uint16_t (*buf)[256])
{
    ata_command(lba, (uint8_t)count, ATA_CMD_READ_SECTORS);
    for (unsigned s = 0; s < count; s++) {
        uint8_t status = ata_wait_not_busy();
        if ((status & (ATA_ERR | ATA_DF)) || !(status & ATA_DRQ))
            return status;
        insw(ATA_DATA, buf[s], 256);
        ata_delay_400ns();
    }
    return 0;
}

static void ata_string(const uint16_t *words, unsigned n, char *out)   /* IDENTIFY text */
{
    for (unsigned i = 0; i < n; i++) {      /* two characters per word, the first in 15:8 */
        out[2 * i] = (char)(words[i] >> 8);
        out[2 * i + 1] = (char)words[i];
    }
    unsigned len = 2 * n;
    while (len && out[len - 1] == ' ')
        len--;
    out[len] = 0;
}

static void check_ide(void)
{
    /* Software reset (ATA-6 9.2): SRST set then cleared in Device Control; the device then
     * shows the ATA signature (count 1, LBA 1, 0, 0; an ATAPI device would show 0x14/0xEB)
     * and diagnostic code 01h (passed) in Error. nIEN stays set: we poll first. The firmware
     * may have left device 1 selected (SeaBIOS probes both), and registers read from the
     * selected device, so select device 0 (the master) before and after. */
    info("ide as the firmware left it: device %x status %x", inb(ATA_DEVICE), inb(ATA_ALT_STATUS));
    outb(ATA_DEVICE, 0xA0);                 /* device 0; bits 7 and 5 are obsolete ones */
    outb(ATA_CONTROL, ATA_NIEN | ATA_SRST);
    ata_delay_400ns();
    outb(ATA_CONTROL, ATA_NIEN);
    ata_delay_400ns();
    uint8_t status = ata_wait_not_busy();
    outb(ATA_DEVICE, 0xA0);
    ata_delay_400ns();
    status = ata_wait_not_busy();
    uint8_t sig[5] = { inb(ATA_COUNT), inb(ATA_LBA_LOW), inb(ATA_LBA_MID), inb(ATA_LBA_HIGH),
                       inb(ATA_ERROR) };
    info("ide after reset: status %x count %x lba %x %x %x error %x", status, sig[0], sig[1],
         sig[2], sig[3], sig[4]);
    check((status & (ATA_BSY | ATA_DRDY | ATA_DF | ATA_DRQ | ATA_ERR)) == ATA_DRDY
          && sig[0] == 1 && sig[1] == 1 && sig[2] == 0 && sig[3] == 0 && sig[4] == 0x01,
          "ide-reset", "status %x, signature %x %x %x %x, error %x", status, sig[0], sig[1],
          sig[2], sig[3], sig[4]);

    /* IDENTIFY DEVICE (ATA-6 8.15): 256 words. Word 0 bit 15 = 0: an ATA device; word 49
     * bit 9: LBA supported; words 60-61: sectors addressable with LBA28; words 27-46: model. */
    ata_command(0, 0, ATA_CMD_IDENTIFY);
    status = ata_wait_not_busy();
    uint16_t *id = sector[0];
    char model[41], serial[21];
    if (!(status & ATA_ERR) && (status & ATA_DRQ))
        insw(ATA_DATA, id, 256);
    ata_string(id + 27, 20, model);
    ata_string(id + 10, 10, serial);
    uint32_t sectors = id[60] | (uint32_t)id[61] << 16;
    info("ide identify: model \"%s\" serial \"%s\" %u sectors, CHS %u/%u/%u, word 255 %x",
         model, serial, sectors, id[1], id[3], id[6], id[255]);
    check(!(status & ATA_ERR) && !(id[0] & 0x8000) && (id[49] & 0x200) && model[0]
          && sectors == DISK_SECTORS, "ide-identify",
          "status %x, word 0 %x, word 49 %x, model \"%s\", %u sectors", status, id[0], id[49],
          model, sectors);

    /* READ SECTORS, polled: the first sector, then two from the middle of the disk. */
    int ok = 1;
    status = ata_read_polled(0, 1, sector);
    ok = !status && sector_ok(sector[0], 0);
    status = ata_read_polled(1000, 2, sector);
    ok = ok && !status && sector_ok(sector[0], 1000) && sector_ok(sector[1], 1001);
    uint8_t after = inb(ATA_STATUS);
    check(ok && (after & (ATA_BSY | ATA_DRQ | ATA_ERR)) == 0, "ide-read-polled",
          "status %x, then %x; data %s", status, after, ok ? "right" : "wrong");

    /* READ SECTORS with interrupts: nIEN clear, IRQ 14 on I/O APIC pin 14. The device raises
     * INTRQ when each sector is ready (ATA-6 9.7); the handler reads Status, which lowers it,
     * so the next sector gives a new rising edge on the edge-triggered pin. The last two
     * sectors of the disk. */
    ioapic_route(14, VEC_IDE, 0);
    inb(ATA_STATUS);                        /* drop an interrupt left pending by the polling */
    outb(ATA_CONTROL, 0);
    ata_command(DISK_SECTORS - 2, 2, ATA_CMD_READ_SECTORS);
    ok = 1;
    for (unsigned s = 0; s < 2; s++) {
        wait_for(&ide_irqs, s + 1);
        if ((ide_status_in_irq & (ATA_BSY | ATA_DRQ | ATA_ERR)) != ATA_DRQ) {
            ok = 0;
            break;
        }
        insw(ATA_DATA, sector[s], 256);
    }
    ok = ok && sector_ok(sector[0], DISK_SECTORS - 2) && sector_ok(sector[1], DISK_SECTORS - 1);
    after = inb(ATA_STATUS);
    outb(ATA_CONTROL, ATA_NIEN);
    ioapic_route(14, VEC_MASKED_PIN + 14, 1);
    check(ok && ide_irqs == 2 && (after & (ATA_BSY | ATA_DRQ | ATA_ERR)) == 0, "ide-read-irq14",
          "%u interrupts, status in the handler %x, then %x; data %s", ide_irqs,
          ide_status_in_irq, after, ok ? "right" : "wrong");

    /* A sector past the end: ERR, and Error says why (ATA-6 says IDNF, ID not found; QEMU
     * answers ABRT, command aborted). */
    status = ata_read_polled(DISK_SECTORS, 1, sector);
    uint8_t error = inb(ATA_ERROR);
    info("ide read past the end: status %x error %x", status, error);
    check((status & ATA_ERR) && (error & (ATA_ERROR_ABRT | ATA_ERROR_IDNF)),
          "ide-read-past-end", "status %x, error %x", status, error);
}

/* ----- the kernel ------------------------------------------------------------------------- */
void kmain(uint32_t magic, const struct multiboot_info *mbi)
{
    serial_init();
    idt_init();                             /* from here on an exception prints a FAIL line */
    kprintf("selftest: a Multiboot kernel in C\n");
    check_multiboot(magic, mbi);

    pic_disable();
    check_lapic();
    check_ioapic();
    check_ide();

    check(!unexpected_irqs && !spurious_irqs, "no-stray-interrupts",
          "%u unexpected (last vector %x), %u spurious", unexpected_irqs, unexpected_vector,
          spurious_irqs);
    finish();
}
