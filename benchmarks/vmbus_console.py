"""Part of benchmark 4 (micro): synthetic console throughput, bytes through the VMBus console VSP
(packets in a shared ring, one HvCallSignalEvent per batch) against the emulated 16550's
one-exit-per-byte path in the same run, and the synthetic block device's MB/s.

Each console path runs a generated guest (guests/lib.inc + guests/vmbus.inc) that prints N bytes
from a buffer it filled itself: `vmbus` sends them in PACKET-byte VM_PKT_DATA_INBAND packets to
the vmbus-console VSP of the micro hypervisor's parent partition; `uart-micro` writes each byte
with one OUT to COM1's THR, forwarded to the same parent as an intercept message;
`uart-monolithic` does the same in the monolithic hypervisor, where the UART is a direct call.
Throughput is the marginal rate (N_BIG - N_SMALL) / median(t_big - t_small) with sizes per path
(SIZES), so boot and VMBus bring-up cancel out; partition creation is never timed (goal: VMBus at
least 10x the forwarded UART). Block: guests/vmbus-block.asm with BLOCK_WRITES extra 4-sector WRITE requests
(2 KiB inline in the ring, one request and completion each) before its read-back, the same way.
"""
from __future__ import annotations

import time

import guests
from benchmarks.records import rate, ratio_of, verdict
from emu.asm import assemble
from hypervisors.images import GuestImage
from hypervisors.micro.hypervisor import MicroHypervisor
from hypervisors.monolithic import MonolithicHypervisor

NAME = "micro"
PACKET = 2040                 # console bytes per packet: 2 packets + trailers fill 4 KiB
GOAL = 10.0
# (N_SMALL, N_BIG) per path: each big run takes about a second on a CI-class core
SIZES = {"vmbus": (16 << 10, 1 << 20), "uart-micro": (1 << 10, 16 << 10),
         "uart-monolithic": (4 << 10, 256 << 10)}

PREAMBLE = """bits 16
org 0x7c00
KERNEL_CS equ 0x08
KERNEL_DS equ 0x10
IDT_BASE equ 0x1000
STACK_TOP equ 0x90000
SOURCE equ 0x100000
PACKET_BUF equ 0x26000
COUNT equ {count}
CHUNK equ {chunk}
start:
    cli
    xor ax, ax
    mov ds, ax
    lgdt [gdt_descriptor]
    mov eax, cr0
    or eax, 1
    mov cr0, eax
    jmp dword KERNEL_CS:pm
bits 32
pm:
    mov ax, KERNEL_DS
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov esp, STACK_TOP
    cld
    xor ecx, ecx
.fill:                          ; 'A'..'Z' lines of 64 bytes
    mov eax, ecx
    and eax, 63
    cmp eax, 63
    mov al, 10
    je .store
    mov eax, ecx
    shr eax, 6
    xor edx, edx
    mov ebx, 26
    div ebx
    lea eax, [edx + 'A']
.store:
    mov [SOURCE + ecx], al
    inc ecx
    cmp ecx, COUNT
    jb .fill
    call serial_init
    call idt_init
"""

UART_BODY = """
    mov esi, SOURCE
    mov ecx, COUNT
    mov dx, COM1
.byte:                          ; one OUT (one exit) per byte: THR is always ready here
    lodsb
    out dx, al
    loop .byte
    xor al, al
    jmp exit
"""

VMBUS_BODY = """
    call synic_init
    call vmbus_connect
    mov esi, console_class
    call vmbus_find_offer
    call vmbus_open
    mov esi, SOURCE
    mov ebx, COUNT
.packet:
    mov ecx, CHUNK
    cmp ebx, ecx
    jae .sized
    mov ecx, ebx
.sized:
    mov edi, PACKET_BUF
    mov [edi], ecx
    mov dword [edi + 4], 0
    add edi, 8
    push ecx
    rep movsb
    pop ecx
    sub ebx, ecx
    push esi
    push ebx
    test ebx, ebx
    mov ebx, 0
    jnz .send
    mov ebx, FLAG_COMPLETION
.send:
    add ecx, 8
    mov edx, 1
    mov esi, PACKET_BUF
    call ring_send
    pop ebx
    pop esi
    test ebx, ebx
    jnz .packet
    call ring_kick
    call ring_receive
    xor al, al
    jmp exit
console_class:
    db 0x52, 0x0c, 0x7e, 0x3a, 0x1d, 0x6f, 0x8e, 0x4b
    db 0x9c, 0x1a, 0x5d, 0x2f, 0x7e, 0x6b, 0x4a, 0x01
"""

TRAILER = """
%include "lib.inc"
{vmbus_include}
align 8
gdt:
    dq 0
    dw 0xffff, 0x0000
    db 0x00, 0x9a, 0xcf, 0x00
    dw 0xffff, 0x0000
    db 0x00, 0x92, 0xcf, 0x00
gdt_end:
gdt_descriptor:
    dw gdt_end - gdt - 1
    dd gdt
"""


def guest_source(path: str, count: int) -> str:
    body = VMBUS_BODY if path == "vmbus" else UART_BODY
    include = '%include "vmbus.inc"' if path == "vmbus" else ""
    return (PREAMBLE.format(count=count, chunk=PACKET) + body
            + TRAILER.format(vmbus_include=include))


def image(name: str, source: str) -> GuestImage:
    assembled = assemble(source, include_dirs=[guests.GUEST_DIR])
    return GuestImage(name, assembled.code, assembled.origin, assembled.listing)


class Runner:
    """One micro hypervisor (one parent process), reused for every run, and the guest images."""

    def __init__(self):
        self.micro = MicroHypervisor(engine="trap", sink=self._sink, timeout=300)
        self.received = 0
        self.images: dict[tuple[str, int], GuestImage] = {}

    def _sink(self, data: bytes) -> None:
        self.received += len(data)

    def image(self, path: str, count: int) -> GuestImage:
        if (path, count) not in self.images:
            self.images[path, count] = image(f"{path}-{count}", guest_source(path, count))
        return self.images[path, count]

    def seconds(self, path: str, count: int) -> float:
        guest = self.image(path, count)
        self.received = 0
        if path == "uart-monolithic":
            hypervisor = MonolithicHypervisor(engine="trap", sink=self._sink, timeout=300)
            start = time.perf_counter()
            result = hypervisor.run(guest)
            elapsed = time.perf_counter() - start
            hypervisor.close()
        else:
            partition = self.micro.create_partition()   # set-up, not timed
            start = time.perf_counter()
            result = partition.run(guest)
            elapsed = time.perf_counter() - start
        if result.status != 0 or self.received < count:
            raise RuntimeError(f"{path} with {count} bytes: status {result.status}, "
                               f"{self.received} bytes arrived\n{result.report()}")
        return elapsed

    def block_seconds(self, writes: int) -> float:
        """vmbus-block with `writes` extra 4-sector WRITE requests before its read-back."""
        key = ("block", writes)
        if key not in self.images:
            source = guests.path("vmbus-block").read_text()
            source = source.replace("    ; --- READ it back", BLOCK_REPEAT.format(writes=writes), 1)
            self.images[key] = image(f"block-{writes}", source)
        partition = self.micro.create_partition()   # set-up, not timed
        start = time.perf_counter()
        result = partition.run(self.images[key])
        elapsed = time.perf_counter() - start
        if result.status != 0:
            raise RuntimeError(f"vmbus-block with {writes} writes: {result.report()}")
        return elapsed

    def close(self) -> None:
        self.micro.close()


BLOCK_REPEAT = """    push dword {writes}
.bench_repeat:
    mov eax, BLOCK_WRITE
    mov ecx, SECTORS
    mov edx, FIRST
    call block_request
    dec dword [esp]
    jnz .bench_repeat
    add esp, 4
    ; --- READ it back"""
BLOCK_WRITES = (20, 200)       # WRITE requests of 4 sectors (2 KiB) in the small and big runs


def console_seconds(runner: Runner, reps: int, scale: int) -> dict[str, tuple[list, list]]:
    """path -> (t_big per repetition, t_small per repetition), the paths' order rotating."""
    paths = tuple(SIZES)
    timings: dict[str, tuple[list, list]] = {path: ([], []) for path in paths}
    for rep in range(reps):
        for path in paths[rep % 3:] + paths[:rep % 3]:
            small, big = (size // scale for size in SIZES[path])
            timings[path][0].append(runner.seconds(path, big))
            timings[path][1].append(runner.seconds(path, small))
    return timings


def bench_records(quick: bool) -> list[dict]:
    """Console bytes/s on each path, VMBus over the forwarded UART, and block MB/s."""
    scale, reps = (4, 1) if quick else (1, 3)
    runner = Runner()
    try:
        timings = console_seconds(runner, reps, scale)
        small, big = BLOCK_WRITES
        block = ([], [])
        for _ in range(reps):
            block[0].append(runner.block_seconds(big))
            block[1].append(runner.block_seconds(small))
    finally:
        runner.close()
    consoles = {path: rate(NAME, "trap", "monolithic" if path == "uart-monolithic" else "micro",
                           f"console_{path}_bytes_per_second",
                           (SIZES[path][1] - SIZES[path][0]) // scale, *timings[path], "B/s")
                for path in SIZES}
    x_uart = ratio_of(NAME, "trap", "micro", "vmbus_console_x_uart", consoles["vmbus"],
                      consoles["uart-micro"], paired=True)
    verdict(x_uart, GOAL, at_least=True)
    return [*consoles.values(), x_uart,
            rate(NAME, "trap", "micro", "block_mb_per_second", (big - small) * 2048 / 1e6, *block,
                 "MB/s", request="WRITE of 4 sectors (2 KiB) per request, inline in the ring")]
