"""Benchmark 3, CPU-bound overhead: benchmarks/guests/compute32.asm (a 10-instruction loop of
IMUL/ADD and a read-modify-write in a 64 KiB buffer, no exits) under every engine against the
native engine (goal: within 3%), and the native engine against bare Unicorn running the same
guest without any VMM (one uc_emu_start, with and without an instruction count).

Ratios are paired: the median of per-repetition ratios, since runs of one repetition sit close
in time on a shared machine.
"""
from __future__ import annotations

import statistics
from typing import Callable

from benchmarks.harness import COUNTED, EMPTY_VARIANT, Guest, run_bare, run_vm
from benchmarks.loops import Context
from benchmarks.records import BARE, NONE, Section, fmt, missing, record, spread, with_spread

NAME = "cpu"
TITLE = "3. CPU-bound guest (compute32, no exits): s per run, M guest instructions/s"
PASSES = {True: 200_000, False: 3_000_000}
INSTRUCTIONS_PER_PASS = 10
GOAL = 1.03
FLOOR, COUNTED_FLOOR = (BARE, NONE), (f"{BARE}-counted", NONE)   # no VMM; with a count


def configurations(ctx: Context, guest: Guest) -> dict[tuple[str, str], Callable]:
    """(engine, hypervisor) -> run(passes) -> seconds."""
    configs = {
        FLOOR: lambda n: run_bare(guest, guest.with_params(n, EMPTY_VARIANT), "pm0").seconds,
        COUNTED_FLOOR: lambda n: run_bare(guest, guest.with_params(n, EMPTY_VARIANT), "pm0",
                                          COUNTED).seconds,
    }
    for name, cls in ctx.available_hypervisors().items():
        for engine in ctx.engines:
            configs[engine, name] = (lambda e, c: lambda n: run_vm(
                guest.with_params(n, EMPTY_VARIANT), e, c).seconds)(engine, cls)
    return configs


def measure(ctx: Context, configs: dict, passes: int) -> tuple[dict, dict]:
    """Samples per configuration (rotated repetitions), and the errors of those that failed."""
    samples: dict[tuple, list[float]] = {key: [] for key in configs}
    errors: dict[tuple, str] = {}
    keys = list(configs)
    for key in keys:
        try:
            configs[key](passes // 20)                      # warm-up, not recorded
        except Exception as exc:  # noqa: BLE001
            errors[key] = f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
    live = [key for key in keys if key not in errors]
    for rep in range(ctx.reps):
        for key in live[rep % len(live):] + live[:rep % len(live)]:
            ctx.progress(f"{key[0]}/{key[1]} rep {rep + 1}/{ctx.reps}")
            samples[key].append(configs[key](passes))
    return samples, errors


def paired(a: list[float], b: list[float]) -> float | None:
    return statistics.median(x / y for x, y in zip(a, b)) if a and b else None


def run(ctx: Context) -> Section:
    guest = Guest.load("compute32")
    passes = PASSES[ctx.quick]
    samples, errors = measure(ctx, configurations(ctx, guest), passes)
    section = Section(NAME, f"{TITLE} ({passes} passes x {INSTRUCTIONS_PER_PASS} instructions)")
    section.lines.append(f"    {'engine/hypervisor':<24} {'median s':>9} {'p10':>8} {'p90':>8} "
                         f"{'Minsn/s':>8} {'x bare':>8} {'x native':>8}  goal")
    for key, values in samples.items():
        line, records = row(key, values, samples, errors.get(key), passes)
        section.lines.append(line)
        section.records += records
    return section


def row(key: tuple, values: list[float], samples: dict, error: str | None,
        passes: int) -> tuple[str, list[dict]]:
    engine, hypervisor = key
    label = f"{engine}/{hypervisor}"
    if error:
        return (f"    {label:<24} not measured: {error}",
                [missing(NAME, engine, hypervisor, "seconds_per_run", "s", error)])
    s = spread(values)
    minsn = passes * INSTRUCTIONS_PER_PASS / s["median"] / 1e6
    x_bare = paired(values, samples[FLOOR]) if key != FLOOR else None
    native = samples.get(("native", hypervisor))
    x_native = paired(values, native) if engine != "native" and hypervisor != NONE else None
    goal = "" if x_native is None else f"<= {GOAL:.2f} {'ok' if x_native <= GOAL else 'MISSED'}"
    records = [with_spread(NAME, engine, hypervisor, "seconds_per_run", values, "s",
                           passes=passes),
               record(NAME, engine, hypervisor, "minsn_per_second", minsn, "Minsn/s")]
    if x_bare is not None:
        records.append(record(NAME, engine, hypervisor, "x_bare_uncounted", x_bare, "ratio"))
    if x_native is not None:
        records.append(record(NAME, engine, hypervisor, "x_native", x_native, "ratio",
                              goal=GOAL, meets_goal=x_native <= GOAL))
    line = (f"    {label:<24} {s['median']:9.4f} {s['p10']:8.4f} {s['p90']:8.4f} {minsn:8.1f} "
            f"{fmt(x_bare)} {fmt(x_native)}  {goal}")
    return line, records
