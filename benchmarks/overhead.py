"""Benchmark 3, CPU-bound overhead: benchmarks/guests/compute32.asm (a 10-instruction loop of
IMUL/ADD and a read-modify-write in a 64 KiB buffer, a store every 10 instructions, no exits)
under every engine against the native engine (goal: within 3%), and against the bare machine
running the same image with no VMM at all:

- stock Unicorn (emu/baseline.py) booting the flat image, in the default TLB mode (every store
  on QEMU's notdirty slow path) and in UC_TLB_VIRTUAL with split grants (fetch: READ|EXEC, data:
  READ|WRITE; stores as cheap as loads), both in this run; the issue's goal is native within
  1.1x of the faster of the two;
- trapvisor's own `emu.cpu.Cpu` with no VMM, started at the 32-bit entry, with and without an
  instruction count (a counting vCPU runs uc_emu_start(count=N)).

Every row times one whole run (set-up excluded); each repetition runs every configuration once,
in a rotated order, and the ratios are paired: per repetition, then their median and range.
"""
from __future__ import annotations

from typing import Callable

from benchmarks.harness import COUNTED, EMPTY_VARIANT, RAM, Guest, run_bare, run_vm
from benchmarks.loops import Context
from benchmarks.records import (BARE, NONE, Section, cells, fmt, missing, ratio_of, verdict,
                                with_spread)
from emu.baseline import TLB_MODES, run_flat_image

NAME = "cpu"
TITLE = "3. CPU-bound guest (compute32, no exits): s per run (median, min, max), M instructions/s"
PASSES = {True: 200_000, False: 3_000_000}
INSTRUCTIONS_PER_PASS = 10
GOAL = 1.03             # every engine against native
BARE_GOAL = 1.1         # native against stock Unicorn's faster TLB mode (issue 12)
FLOOR, COUNTED_FLOOR = (BARE, NONE), (f"{BARE}-counted", NONE)   # emu.cpu.Cpu, no VMM
STOCK = {mode: (f"unicorn-{mode}-tlb", NONE) for mode in TLB_MODES}   # emu/baseline.py


def configurations(ctx: Context, guest: Guest) -> dict[tuple[str, str], Callable]:
    """(engine, hypervisor) -> run(passes) -> seconds."""
    image = (lambda n: guest.with_params(n, EMPTY_VARIANT))
    configs = {key: (lambda m: lambda n: run_flat_image(image(n).code, image(n).origin, RAM, m)
                     .seconds)(mode) for mode, key in STOCK.items()}
    configs[FLOOR] = lambda n: run_bare(guest, image(n), "pm0").seconds
    configs[COUNTED_FLOOR] = lambda n: run_bare(guest, image(n), "pm0", COUNTED).seconds
    for name, cls in ctx.available_hypervisors().items():
        for engine in ctx.engines:
            configs[engine, name] = (lambda e, c: lambda n: run_vm(image(n), e, c).seconds)(
                engine, cls)
    return configs


def measure(ctx: Context, configs: dict, passes: int) -> tuple[dict, dict]:
    """Samples per configuration (rotated repetitions), and the errors of those that failed."""
    samples: dict[tuple, list[float]] = {key: [] for key in configs}
    errors: dict[tuple, str] = {}
    for key in list(configs):
        try:
            configs[key](passes // 20)                      # warm-up, not recorded
        except Exception as exc:  # noqa: BLE001  (one broken configuration is reported)
            errors[key] = f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
    live = [key for key in configs if key not in errors]
    for rep in range(ctx.reps):
        for key in live[rep % len(live):] + live[:rep % len(live)]:
            ctx.progress(f"{key[0]}/{key[1]} rep {rep + 1}/{ctx.reps}")
            samples[key].append(configs[key](passes))
    return samples, errors


def run(ctx: Context) -> Section:
    guest = Guest.load("compute32")
    passes = PASSES[ctx.quick]
    samples, errors = measure(ctx, configurations(ctx, guest), passes)
    section = Section(NAME, f"{TITLE} ({passes} passes x {INSTRUCTIONS_PER_PASS} instructions)")
    seconds = {key: seconds_record(key, samples[key], errors.get(key), passes)
               for key in samples}
    fastest = fastest_stock(seconds)
    section.lines.append(f"    {'engine/hypervisor':<28} {'median s':>8} {'min':>8} {'max':>8} "
                         f"{'Minsn/s':>8} {'x bare':>8} {'x native':>8}  goal")
    for key, main in seconds.items():
        line, records = row(key, main, seconds, fastest, passes)
        section.lines.append(line)
        section.records += records
    if fastest is not None:
        section.lines.append(f"    (x bare: against {fastest[0]}, the faster stock-Unicorn mode "
                             "in this run; rows without a VMM are against it too)")
    return section


def seconds_record(key: tuple, values: list[float], error: str | None, passes: int) -> dict:
    engine, hypervisor = key
    if error:
        return missing(NAME, engine, hypervisor, "seconds_per_run", "s", error)
    return with_spread(NAME, engine, hypervisor, "seconds_per_run", values, "s", passes=passes)


def fastest_stock(seconds: dict) -> tuple | None:
    """The stock-Unicorn configuration with the lower median, or None if neither ran."""
    measured = [key for key in STOCK.values() if seconds[key]["value"] is not None]
    return min(measured, key=lambda key: seconds[key]["value"]) if measured else None


def row(key: tuple, main: dict, seconds: dict, fastest: tuple | None,
        passes: int) -> tuple[str, list[dict]]:
    engine, hypervisor = key
    label = f"{engine}/{hypervisor}"
    if main["value"] is None:
        return f"    {label:<28} not measured: {main['reason']}", [main]
    minsn = with_spread(NAME, engine, hypervisor, "minsn_per_second",
                        [passes * INSTRUCTIONS_PER_PASS / s / 1e6 for s in main["samples"]],
                        "Minsn/s")
    records = [main, minsn]
    goal = ""
    x_bare = None
    if fastest is not None and key != fastest:
        x_bare = ratio_of(NAME, engine, hypervisor, "x_bare_fastest", main, seconds[fastest],
                          paired=True, baseline=fastest[0])
        records.append(x_bare)
        if engine == "native":
            goal = f"x bare {verdict(x_bare, BARE_GOAL)}"
    x_native = None
    native = seconds.get(("native", hypervisor))
    if native is not None and engine != "native" and hypervisor != NONE:
        x_native = ratio_of(NAME, engine, hypervisor, "x_native", main, native, paired=True)
        records.append(x_native)
        goal = f"x native {verdict(x_native, GOAL)}"
    line = (f"    {label:<28} {cells(main, '.4f')} {fmt(minsn['value'], '.1f')} "
            f"{fmt(x_bare and x_bare['value'])} {fmt(x_native and x_native['value'])}  {goal}")
    return line.rstrip(), records
