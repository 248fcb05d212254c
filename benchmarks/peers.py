"""Benchmark 5, peers and Unicorn itself: the same flat boot-sector guests under QEMU (TCG) beside
trapvisor, when qemu-system-i386 is installed, and guest loads against guest stores.

QEMU: `-display none -no-reboot`, isa-debug-exit at 0xF4 ends the run; wall time of the whole
process minus an empty guest's startup measured the same way. Guests: compute32 (CPU-bound) and
exits32 with OUT 0x80 (I/O-heavy), padded to a 512-byte sector with the 0x55AA signature.

Loads against stores (benchmarks/guests/memops32.asm): ns per access on a data page and on the
code's own page, on bare Unicorn without and with a UC_HOOK_MEM_WRITE on an untouched page, and
under each engine. Unicorn 2.1's qemu/include/exec/ram_addr.h stubs the dirty-memory bitmap
(cpu_physical_memory_get_dirty() returns false), so cpu_physical_memory_is_clean() is true for
every RAM page: every TLB entry carries TLB_NOTDIRTY forever and every store takes the slow path
(store_helper -> notdirty_write -> tb_invalidate_phys_page_fast), code on the page or not.
"""
from __future__ import annotations

import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from benchmarks.harness import EMPTY_VARIANT, Guest, run_bare, run_vm
from benchmarks.loops import Context
from benchmarks.records import (BARE, NONE, Section, fmt, missing, ratio, value_text,
                                with_spread)

NAME = "peers"
TITLE = "5. Peers (QEMU) and Unicorn's guest loads against stores"
QEMU = "qemu-system-i386"
QEMU_ARGS = ("-display", "none", "-no-reboot", "-device", "isa-debug-exit,iobase=0xf4,iosize=4")
PEER_GUESTS = {"cpu_bound": ("compute32", 0), "io_heavy": ("exits32", 1)}
PEER_PASSES = {True: 20_000, False: 500_000}
MEMOPS = {1: "load_data_page", 2: "store_data_page", 3: "load_code_page", 4: "store_code_page"}
ACCESSES_PER_PASS = 8
MEM_PASSES = {True: 50_000, False: 1_000_000}


def run(ctx: Context) -> Section:
    section = Section(NAME, TITLE)
    qemu_section(ctx, section)
    memops_section(ctx, section)
    return section


# ----- QEMU -------------------------------------------------------------------------------------
def boot_sector(code: bytes) -> bytes:
    if len(code) > 510:
        raise ValueError(f"{len(code)} bytes do not fit a boot sector")
    return code.ljust(510, b"\0") + b"\x55\xaa"


def time_qemu(sector: bytes, directory: Path) -> float:
    image = directory / "guest.img"
    image.write_bytes(sector)
    started = time.perf_counter()
    done = subprocess.run([QEMU, *QEMU_ARGS, "-drive", f"format=raw,file={image}"],
                          capture_output=True, timeout=120)
    seconds = time.perf_counter() - started
    if done.returncode != 1:     # status 0 through isa-debug-exit: (0 << 1) | 1
        raise RuntimeError(f"{QEMU} exited {done.returncode}: {done.stderr[-300:]!r}")
    return seconds


def qemu_section(ctx: Context, section: Section) -> None:
    if shutil.which(QEMU) is None:
        reason = f"{QEMU} is not installed (the benchmark never installs it)"
        section.lines.append(f"  QEMU: not measured: {reason}")
        section.records += [missing(NAME, "qemu-tcg", NONE, f"{kind}_seconds", "s", reason)
                            for kind in PEER_GUESTS]
        return
    passes = PEER_PASSES[ctx.quick]
    section.lines.append(f"  QEMU TCG beside trapvisor ({passes} passes; QEMU minus its empty-"
                         "guest startup; trapvisor times run() only)")
    with tempfile.TemporaryDirectory() as tmp:
        for kind, (name, variant) in PEER_GUESTS.items():
            guest = Guest.load(name)
            empty = [time_qemu(boot_sector(guest.with_params(1, EMPTY_VARIANT).code), Path(tmp))
                     for _ in range(ctx.reps)]
            loaded = [time_qemu(boot_sector(guest.with_params(passes, variant).code), Path(tmp))
                      for _ in range(ctx.reps)]
            ctx.progress(f"qemu {kind}")
            qemu = [a - statistics.median(empty) for a in loaded]
            found = [with_spread(NAME, "qemu-tcg", NONE, f"{kind}_seconds", qemu, "s",
                                 startup_s=statistics.median(empty))]
            for engine in ctx.engines:
                ours = [run_vm(guest.with_params(passes, variant), engine).seconds
                        for _ in range(ctx.reps)]
                found.append(with_spread(NAME, engine, "monolithic", f"{kind}_seconds", ours, "s"))
            section.records += found
            section.lines += [f"    {kind:<10} {r['engine']:<8} {value_text(r, '8.4f')}"
                              for r in found]


# ----- loads against stores ---------------------------------------------------------------------
def memops_configs(ctx: Context, guest: Guest) -> dict:
    """label -> (engine, hypervisor, run(passes, variant) -> seconds)."""
    configs = {
        "bare": (BARE, NONE, lambda n, v: run_bare(guest, guest.with_params(n, v), "pm0").seconds),
        "bare + MEM_WRITE hook": (f"{BARE}+memhook", NONE, lambda n, v: run_bare(
            guest, guest.with_params(n, v), "pm0", memory_hook=True).seconds),
    }
    for engine in ctx.engines:
        configs[engine] = (engine, "monolithic", (lambda e: lambda n, v: run_vm(
            guest.with_params(n, v), e).seconds)(engine))
    return configs


def memops_section(ctx: Context, section: Section) -> None:
    guest = Guest.load("memops32")
    passes = MEM_PASSES[ctx.quick]
    section.lines += [f"  guest loads and stores, ns per access ({passes} passes x "
                      f"{ACCESSES_PER_PASS}, minus the empty loop; median of {ctx.reps})",
                      f"    {'':<24}" + "".join(f"{name:>17}" for name in MEMOPS.values())]
    for label, (engine, hypervisor, runner) in memops_configs(ctx, guest).items():
        runner(passes // 20, 4)                              # warm-up
        cells = []
        for variant, metric in MEMOPS.items():
            ctx.progress(f"loads/stores {label} {metric}")
            ns = [per_access(runner, passes, variant) for _ in range(ctx.reps)]
            found = with_spread(NAME, engine, hypervisor, f"{metric}_ns", ns, "ns")
            section.records.append(found)
            cells.append(fmt(found["value"], ".1f", 17))
        section.lines.append(f"    {label:<24}" + "".join(cells))
    section.lines += memops_verdict(section.records)


def per_access(runner, passes: int, variant: int) -> float:
    loaded, empty = runner(passes, variant), runner(passes, EMPTY_VARIANT)
    return (loaded - empty) / (passes * ACCESSES_PER_PASS) * 1e9


def memops_verdict(records: list[dict]) -> list[str]:
    """What the bare rows say about the hypothesis, computed from them."""
    bare = {r["metric"]: r["value"] for r in records
            if r["engine"] == BARE and r["benchmark"] == NAME and r["metric"].endswith("_ns")}
    store_x_load = ratio(bare["store_data_page_ns"], bare["load_data_page_ns"])
    code_x_data = ratio(bare["store_code_page_ns"], bare["store_data_page_ns"])
    if store_x_load is None or code_x_data is None:
        return ["  bare Unicorn: no verdict on loads against stores: a bare figure above is not "
                "measured (its median is not positive)"]
    lines = [f"  bare Unicorn: a store costs {store_x_load:.0f}x a load on a page with no code; "
             f"a store to the code's own page costs {code_x_data:.2f}x a store to the data page."]
    if code_x_data < 1.5:
        return lines + [
            "  So code pages are not the cause: Unicorn 2.1 stubs QEMU's dirty-memory bitmap "
            "(ram_addr.h: get_dirty() is false, is_clean() true), every RAM TLB entry keeps "
            "TLB_NOTDIRTY, and every store runs notdirty_write's SMC check. Keeping guest data "
            "off code pages does not help on this Unicorn; one that tracks code pages would."]
    return lines + ["  Stores to pages holding translated code pay the SMC check (TLB_NOTDIRTY): "
                    "keep guest data off code pages."]
