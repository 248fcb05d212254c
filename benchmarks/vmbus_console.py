"""Synthetic console throughput: bytes through the VMBus console VSP (packets in a shared ring, one
HvCallSignalEvent per batch) against the emulated 16550's one-exit-per-byte path, same run.

    python benchmarks/vmbus_console.py [--quick] [--reps N] [--json PATH]

Each path runs a generated guest (guests/lib.inc + guests/vmbus.inc) that prints N bytes from a
buffer it filled itself: `vmbus` sends them in PACKET-byte VM_PKT_DATA_INBAND packets to the
vmbus-console VSP of the micro hypervisor's parent partition; `uart-micro` writes each byte with
one OUT to COM1's THR, forwarded to the same parent as an intercept message; `uart-monolithic`
does the same in the monolithic hypervisor, where the UART is a direct call. Throughput is the
marginal rate (N_BIG - N_SMALL) / (t_big - t_small) with sizes per path (SIZES), so boot, VMBus
bring-up and partition creation cancel out; the table shows the median over the repetitions.
Never part of the test run.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from hypervisors.images import resolve  # noqa: E402
from hypervisors.micro.hypervisor import MicroHypervisor  # noqa: E402
from hypervisors.monolithic import MonolithicHypervisor  # noqa: E402

GUEST_DIR = REPO / "guests"
DEFAULT_JSON = HERE / "results" / "vmbus_console.json"
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
%include "{lib}"
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
    include = f'%include "{GUEST_DIR / "vmbus.inc"}"' if path == "vmbus" else ""
    return (PREAMBLE.format(count=count, chunk=PACKET) + body
            + TRAILER.format(lib=GUEST_DIR / "lib.inc", vmbus_include=include))


class Runner:
    """One micro hypervisor (one parent process) and the monolithic one, reused for every run."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.micro = MicroHypervisor(engine="trap", sink=self._sink, timeout=300)
        self.received = 0
        self.images: dict[tuple[str, int], object] = {}

    def _sink(self, data: bytes) -> None:
        self.received += len(data)

    def image(self, path: str, count: int):
        if (path, count) not in self.images:
            source = self.workdir / f"{path}-{count}.asm"
            source.write_text(guest_source(path, count))
            self.images[path, count] = resolve(str(source), 32 << 20)
        return self.images[path, count]

    def seconds(self, path: str, count: int) -> float:
        image = self.image(path, count)
        self.received = 0
        if path == "uart-monolithic":
            hypervisor = MonolithicHypervisor(engine="trap", sink=self._sink, timeout=300)
            start = time.perf_counter()
            result = hypervisor.run(image)
            elapsed = time.perf_counter() - start
            hypervisor.close()
        else:
            start = time.perf_counter()
            result = self.micro.run(image)
            elapsed = time.perf_counter() - start
        if result.status != 0 or self.received < count:
            raise RuntimeError(f"{path} with {count} bytes: status {result.status}, "
                               f"{self.received} bytes arrived\n{result.report()}")
        return elapsed

    def block_seconds(self, writes: int) -> float:
        """vmbus-block with `writes` extra 4-sector WRITE requests before its read-back."""
        key = ("block", writes)
        if key not in self.images:
            source = (GUEST_DIR / "vmbus-block.asm").read_text()
            source = source.replace('%include "', f'%include "{GUEST_DIR}/')
            source = source.replace("    ; --- READ it back", BLOCK_REPEAT.format(writes=writes), 1)
            path = self.workdir / f"block-{writes}.asm"
            path.write_text(source)
            self.images[key] = resolve(str(path), 32 << 20)
        start = time.perf_counter()
        result = self.micro.run(self.images[key])
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


def block_mb_per_second(runner: Runner, reps: int) -> float:
    """Marginal MB/s of 4-sector synthetic-block WRITEs (each one request and completion)."""
    small, big = BLOCK_WRITES
    rates = [(big - small) * 2048 / max(runner.block_seconds(big) - runner.block_seconds(small),
                                        1e-9) / 1e6 for _ in range(reps)]
    return statistics.median(rates)


def measure(runner: Runner, reps: int, scale: int) -> dict:
    paths = tuple(SIZES)
    rates: dict[str, list[float]] = {path: [] for path in paths}
    for rep in range(reps):
        for path in paths[rep % 3:] + paths[:rep % 3]:
            small, big = (size // scale for size in SIZES[path])
            delta = runner.seconds(path, big) - runner.seconds(path, small)
            rates[path].append((big - small) / max(delta, 1e-9))
    return {path: statistics.median(values) for path, values in rates.items()}


def rates_of(scale: int, reps: int, block: bool = False) -> dict:
    with tempfile.TemporaryDirectory(prefix="trapvisor-vmbus-bench-") as workdir:
        runner = Runner(Path(workdir))
        try:
            rates = measure(runner, reps, scale)
            if block:
                rates["block_mb_per_second"] = block_mb_per_second(runner, reps)
            return rates
        finally:
            runner.close()


def bench_records(quick: bool) -> list[dict]:
    """`trapvisor bench` entry point: console bytes/s on each path, and VMBus over the UART."""
    from benchmarks.records import record
    rates = rates_of(*((4, 1) if quick else (1, 3)), block=True)
    block = rates.pop("block_mb_per_second")
    records = [record("micro", "trap", "monolithic" if path == "uart-monolithic" else "micro",
                      f"console_{path}_bytes_per_second", rate, "B/s")
               for path, rate in rates.items()]
    records.append(record("micro", "trap", "micro", "vmbus_console_x_uart",
                          rates["vmbus"] / rates["uart-micro"], "ratio", target=GOAL))
    records.append(record("micro", "trap", "micro", "block_mb_per_second", block, "MB/s",
                          request="WRITE of 4 sectors (2 KiB) per request, inline in the ring"))
    return records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer bytes, one repetition")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    args = parser.parse_args(argv)
    scale, reps = (4, 1) if args.quick else (1, max(1, args.reps))
    rates = rates_of(scale, reps)
    ratio = rates["vmbus"] / rates["uart-micro"]
    report = {"bytes_per_second": rates, "ratio_vmbus_to_uart_micro": ratio,
              "ratio_vmbus_to_uart_monolithic": rates["vmbus"] / rates["uart-monolithic"],
              "goal_ratio": GOAL, "packet_bytes": PACKET, "reps": reps,
              "bytes": {path: [n // scale for n in sizes] for path, sizes in SIZES.items()},
              "python": platform.python_version(), "machine": platform.machine()}
    for path, rate in rates.items():
        print(f"{path:16} {rate / 1e3:10.1f} kB/s")
    print(f"vmbus / uart-micro = {ratio:.1f}x (goal >= {GOAL:.0f}x)")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if ratio >= GOAL else 1


if __name__ == "__main__":
    sys.exit(main())
