"""Benchmark 5, peers and Unicorn itself: the same flat boot-sector images under QEMU (TCG),
when qemu-system-i386 is installed, beside trapvisor and bare Unicorn, and guest loads against
guest stores.

QEMU is timed as a whole process (`-display none -no-reboot`, isa-debug-exit at 0xF4 ends the
run), so its start-up (process, SeaBIOS, reading the boot sector) is in every figure. It is
subtracted honestly, by the same method on every side: each repetition runs the image with N
passes and the same image with 1 pass, back to back in alternating order, and the figure is the
difference per repetition (records.cost: null when it is within the 1-pass runs' own spread, as
QEMU's start-up jitter of ~0.1 s often makes it with --quick's N). trapvisor and bare Unicorn
are timed the same way, N passes minus 1 pass, with set-up excluded (run() / emu_start alone).
Guests: compute32 (CPU-bound, a store every 10 instructions) and exits32 with OUT 0x80
(I/O-heavy), padded to a 512-byte sector with the 0x55AA signature. Goal (issue 12): native
within 3x of QEMU TCG on the CPU-bound guest.

`trapvisor run hello` beside `qemu-system-i386` booting guests/hello.asm: whole-process wall time
of each, start-up included (what a user waits for), each checked to print the guest's line.

Loads against stores (benchmarks/guests/memops32.asm): ns per access on a data page and on the
code's own page, on bare Unicorn without and with a UC_HOOK_MEM_WRITE on an untouched page, and
under each engine. Unicorn 2.1's qemu/include/exec/ram_addr.h stubs the dirty-memory bitmap
(cpu_physical_memory_get_dirty() returns false), so cpu_physical_memory_is_clean() is true for
every RAM page: every TLB entry carries TLB_NOTDIRTY forever and every store takes the slow path
(store_helper -> notdirty_write -> tb_invalidate_phys_page_fast), code on the page or not.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import guests
from benchmarks.harness import EMPTY_VARIANT, RAM, Guest, run_bare, run_vm
from benchmarks.loops import Context
from benchmarks.records import (BARE, MIN_REPS, NONE, NOT_ENOUGH_REPS, Section, cells, cost, fmt,
                                missing, ratio, ratio_of, value_text, verdict, with_spread)
from emu.asm import assemble
from emu.baseline import run_flat_image

NAME = "peers"
TITLE = "5. Peers (QEMU) and Unicorn's guest loads against stores"
QEMU = "qemu-system-i386"
QEMU_ARGS = ("-display", "none", "-no-reboot", "-device", "isa-debug-exit,iobase=0xf4,iosize=4")
PEER_GUESTS = {"cpu_bound": ("compute32", 0), "io_heavy": ("exits32", 1)}
# quick -> guest -> (QEMU's N, everyone else's N): QEMU's loop must take about a second to stand
# above the jitter of its ~0.3 s start-up
PEER_PASSES = {
    True: {"cpu_bound": (50_000_000, 1_000_000), "io_heavy": (200_000, 20_000)},
    False: {"cpu_bound": (300_000_000, 10_000_000), "io_heavy": (2_000_000, 200_000)},
}
STOCK_FAST = "unicorn-virtual-split-tlb"    # emu/baseline.py's faster mode, CPU-bound row only
QEMU_GOAL = 3.0                             # native against QEMU TCG, CPU-bound guest
HELLO_LINE = b"Hello from a trapvisor guest!"
MEMOPS = {1: "load_data_page", 2: "store_data_page", 3: "load_code_page", 4: "store_code_page"}
MEMOPS_METRICS = {f"{metric}_ns" for metric in MEMOPS.values()}
ACCESSES_PER_PASS = 8
MEM_PASSES = {True: 50_000, False: 1_000_000}


def run(ctx: Context) -> Section:
    section = Section(NAME, TITLE)
    if shutil.which(QEMU) is None:
        reason = f"{QEMU} is not installed (the benchmark never installs it)"
        section.lines.append(f"  QEMU: not measured: {reason}")
        section.records += [missing(NAME, "qemu-tcg", NONE, metric, unit, reason) for metric, unit
                            in (*((f"{kind}_ns_per_pass", "ns") for kind in PEER_GUESTS),
                                ("hello_wall_seconds", "s"))]
    else:
        with tempfile.TemporaryDirectory() as tmp:
            qemu_section(ctx, section, Path(tmp))
            hello_section(ctx, section, Path(tmp))
    memops_section(ctx, section)
    return section


# ----- QEMU -------------------------------------------------------------------------------------
def boot_sector(code: bytes) -> bytes:
    if len(code) > 510:
        raise ValueError(f"{len(code)} bytes do not fit a boot sector")
    return code.ljust(510, b"\0") + b"\x55\xaa"


def run_qemu(code: bytes, directory: Path, *extra: str) -> tuple[float, bytes]:
    """Boot a sector under QEMU: (wall seconds of the whole process, what reached stdout)."""
    image = directory / "guest.img"
    image.write_bytes(boot_sector(code))
    started = time.perf_counter()
    done = subprocess.run([QEMU, *QEMU_ARGS, *extra, "-drive", f"format=raw,file={image}"],
                          capture_output=True, timeout=300)
    seconds = time.perf_counter() - started
    if done.returncode != 1:     # status 0 through isa-debug-exit: (0 << 1) | 1
        raise RuntimeError(f"{QEMU} exited {done.returncode}: {done.stderr[-300:]!r}")
    return seconds, done.stdout


def peer_runners(kind: str, guest: Guest, directory: Path) -> dict:
    """(engine, hypervisor) -> run(passes, variant) -> seconds, for one peer guest."""
    runners = {("qemu-tcg", NONE): lambda n, v: run_qemu(guest.with_params(n, v).code,
                                                         directory)[0],
               ("native", "monolithic"): lambda n, v: run_vm(guest.with_params(n, v),
                                                             "native").seconds}
    if kind == "cpu_bound":
        runners[STOCK_FAST, NONE] = lambda n, v: run_flat_image(
            guest.with_params(n, v).code, guest.image.origin, RAM, "virtual-split").seconds
    return runners


def qemu_section(ctx: Context, section: Section, directory: Path) -> None:
    section.lines += [
        "  QEMU TCG beside trapvisor: ns per guest pass = (N passes - the same image's 1-pass "
        "run) / N, paired per repetition",
        "  (QEMU: whole process, so its start-up, SeaBIOS and boot cancel out; trapvisor and bare "
        "Unicorn: run() / emu_start only)",
        f"    {'guest':<10} {'engine/hypervisor':<30} {'N':>11} {'ns/pass':>8} {'min':>8} "
        f"{'max':>8} {'x qemu':>8}  goal"]
    for kind, (name, variant) in PEER_GUESTS.items():
        guest = Guest.load(name)
        runners = peer_runners(kind, guest, directory)
        qemu_n, our_n = PEER_PASSES[ctx.quick][kind]
        passes = {key: qemu_n if key[0] == "qemu-tcg" else our_n for key in runners}
        timings = {key: ([], []) for key in runners}
        for rep in range(ctx.reps):
            for key, runner in runners.items():
                ctx.progress(f"{kind} {key[0]} rep {rep + 1}/{ctx.reps}")
                n = passes[key]
                order = (n, 1) if rep % 2 else (1, n)
                seconds = {count: runner(count, variant if count > 1 else EMPTY_VARIANT)
                           for count in order}
                timings[key][0].append(seconds[n])
                timings[key][1].append(seconds[1])
        figures = {key: cost(NAME, *key, f"{kind}_ns_per_pass", loaded, empty, passes[key] - 1,
                             "ns", scale=1e9, passes=passes[key])
                   for key, (loaded, empty) in timings.items()}
        qemu = figures["qemu-tcg", NONE]
        for key, figure in figures.items():
            section.records.append(figure)
            section.lines.append(peer_line(kind, key, figure, qemu, section))


def peer_line(kind: str, key: tuple, figure: dict, qemu: dict, section: Section) -> str:
    label = f"{key[0]}/{key[1]}"
    if figure["value"] is None:
        return f"    {kind:<10} {label:<30} not measured: {figure['reason']}"
    x_qemu, goal = None, ""
    if key[0] != "qemu-tcg":
        x_qemu = ratio_of(NAME, *key, f"{kind}_x_qemu", figure, qemu, paired=True)
        section.records.append(x_qemu)
        if kind == "cpu_bound" and key[0] == "native":
            goal = f"x qemu {verdict(x_qemu, QEMU_GOAL)}"
    return (f"    {kind:<10} {label:<30} {figure['passes']:11d} {cells(figure, '.2f')} "
            f"{fmt(x_qemu and x_qemu['value'], '.2f')}  {goal}").rstrip()


def hello_section(ctx: Context, section: Section, directory: Path) -> None:
    """Whole-process wall time of `trapvisor run hello` and of QEMU booting the same image."""
    source = guests.path("hello")
    code = assemble(source.read_text(), filename=str(source),
                    include_dirs=[guests.GUEST_DIR]).code
    runners = {("trapvisor", "monolithic"): lambda: run_trapvisor_hello(),
               ("qemu-tcg", NONE): lambda: run_qemu_hello(code, directory)}
    samples = {key: [] for key in runners}
    for rep in range(ctx.reps):
        for key in list(runners)[rep % 2:] + list(runners)[:rep % 2]:
            ctx.progress(f"hello {key[0]} rep {rep + 1}/{ctx.reps}")
            samples[key].append(runners[key]())
    found = {key: with_spread(NAME, *key, "hello_wall_seconds", values, "s",
                              command=HELLO_COMMANDS[key[0]])
             for key, values in samples.items()}
    x_qemu = ratio_of(NAME, "trapvisor", "monolithic", "hello_wall_x_qemu",
                      found["trapvisor", "monolithic"], found["qemu-tcg", NONE], paired=True)
    section.records += [*found.values(), x_qemu]
    section.lines += ["  `trapvisor run hello` beside QEMU booting the same image: whole-process "
                      "wall s, start-up included (median, min, max)"]
    section.lines += [f"    {HELLO_COMMANDS[key[0]]:<44} {value_text(r, '.3f')}"
                      for key, r in found.items()]
    section.lines.append(f"    trapvisor x qemu: {value_text(x_qemu, '.2f')}")


HELLO_COMMANDS = {"trapvisor": "trapvisor run hello",
                  "qemu-tcg": f"{QEMU} -serial stdio (hello.img)"}


def run_trapvisor_hello() -> float:
    started = time.perf_counter()
    command = [shutil.which("trapvisor")] if shutil.which("trapvisor") else [
        sys.executable, "-m", "hypervisors.cli"]
    done = subprocess.run([*command, "run", "hello"], capture_output=True, timeout=120)
    seconds = time.perf_counter() - started
    if done.returncode != 0 or HELLO_LINE not in done.stdout:
        raise RuntimeError(f"trapvisor run hello exited {done.returncode}: "
                           f"{done.stdout[-200:]!r} {done.stderr[-300:]!r}")
    return seconds


def run_qemu_hello(code: bytes, directory: Path) -> float:
    seconds, stdout = run_qemu(code, directory, "-serial", "stdio")
    if HELLO_LINE not in stdout:
        raise RuntimeError(f"{QEMU} booted hello but printed {stdout[-200:]!r}")
    return seconds


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
        row = []
        for variant, metric in MEMOPS.items():
            ctx.progress(f"loads/stores {label} {metric}")
            loaded, empty = [], []
            for rep in range(ctx.reps):
                order = (variant, EMPTY_VARIANT) if rep % 2 else (EMPTY_VARIANT, variant)
                seconds = {v: runner(passes, v) for v in order}
                loaded.append(seconds[variant])
                empty.append(seconds[EMPTY_VARIANT])
            found = cost(NAME, engine, hypervisor, f"{metric}_ns", loaded, empty,
                         passes * ACCESSES_PER_PASS, "ns", scale=1e9)
            section.records.append(found)
            row.append(fmt(found["value"], ".1f", 17))
        section.lines.append(f"    {label:<24}" + "".join(row))
    section.lines += [f"    {r['engine']} {r['metric']}: not measured: {r['reason']}"
                      for r in section.records if r["metric"] in MEMOPS_METRICS
                      and r["value"] is None]
    section.lines += memops_verdict(section.records)


def memops_verdict(records: list[dict]) -> list[str]:
    """What the bare rows say about the hypothesis, computed from them."""
    found = {r["metric"]: r for r in records
             if r["engine"] == BARE and r["benchmark"] == NAME and r["metric"].endswith("_ns")}
    bare = {metric: r["value"] for metric, r in found.items()}
    if None in bare.values():
        return ["  bare Unicorn: no verdict on loads against stores: a bare figure above is not "
                "measured"]
    n = min(r["n"] for r in found.values())
    if n < MIN_REPS:
        return [f"  bare Unicorn: no verdict on loads against stores: {NOT_ENOUGH_REPS} "
                f"({n} < {MIN_REPS})"]
    store_x_load = ratio(bare["store_data_page_ns"], bare["load_data_page_ns"])
    code_x_data = ratio(bare["store_code_page_ns"], bare["store_data_page_ns"])
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
