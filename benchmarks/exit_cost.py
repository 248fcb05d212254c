"""Exit-cost benchmarks: what one VM exit, one trapped privileged instruction and a CPU-bound guest
cost under the trap engine, against baselines measured in the same run.

    python benchmarks/exit_cost.py [--quick] [--reps N] [--json PATH]

1. OUT 0x80 (the platform's null device) per exit round trip: the bare machine (emu.cpu.Cpu with an
   on_out that does nothing: Unicorn's C hook + one ctypes callback), the native engine (devices on
   the CPU hook, no VMM), the trap engine's exit fastpath, and the trap engine with an ExitStats
   observer (full VmExit records: the slow path). Real mode and 32-bit protected mode.
2. CLI at guest ring 0 per trap (#GP -> VMM -> emulate -> resume), in real mode (virtual-8086)
   and protected mode (ring 1), against a bare CPU at CPL 3 whose on_interrupt only calls
   take_exception() and steps EIP over the CLI (the floor of fault -> hook -> resume).
3. A CPU-bound guest with no exits: wall time and instructions per second under native and trap,
   plus the bare machine with and without Unicorn's instruction count (which the VMM's virtual
   time needs: every vCPU run is uc_emu_start(count=N)); the OUT benchmark has the counted bare
   row too.

Per-exit cost = (time of an N-pass loop with the instruction - time of the same loop without it)
/ N, one pair per repetition; repetitions interleave every configuration (rotating their order),
and the table shows the median and the minimum. Never part of the test run: pytest only collects
tests/ (pyproject testpaths) and this file is no test module.
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import unicorn  # noqa: E402  (only for its version string in the report)

from benchmarks.harness import (COUNTED, NO_LIMIT, BenchmarkError, Guest, Run,  # noqa: E402
                                Stopwatch, run_bare)
from hypervisors.images import GuestImage  # noqa: E402
from hypervisors.monolithic import MonolithicHypervisor  # noqa: E402
from vmm.observers import ExitStats  # noqa: E402

DEFAULT_JSON = HERE / "results" / "exit_cost.json"
EMPTY, OUT, CLI = 0, 1, 2            # loop variants of exits16.asm / exits32.asm
WARM_UP_PASSES = 1000
TARGET_OUT_US, TARGET_CLI_US, TARGET_COMPUTE_RATIO = 1.0, 3.0, 1.03


@dataclass(frozen=True)
class Sizes:
    reps: int
    out: int          # loop passes of the OUT benchmark
    cli: int          # loop passes of the CLI benchmark
    compute: int      # loop passes of compute32 (10 instructions each)


FULL = Sizes(reps=7, out=60_000, cli=50_000, compute=3_000_000)
QUICK = Sizes(reps=3, out=20_000, cli=10_000, compute=500_000)


# ----- one timed run ----------------------------------------------------------------------------
def run_engine(image: GuestImage, engine: str, stats: bool, expect_out: int = 0) -> Run:
    """Boot ``image`` in the monolithic hypervisor and time hypervisor.run() alone."""
    observer = ExitStats()
    hypervisor = MonolithicHypervisor(engine=engine, observers=[observer] if stats else [])
    try:
        gc.collect()
        with Stopwatch() as watch:
            result = hypervisor.run(image)
        if not result.ok or result.status != 0:
            raise BenchmarkError(f"{image.name} under {engine}:\n{result.report()}")
        if hypervisor.platform.post.writes != expect_out:
            raise BenchmarkError(f"{image.name} under {engine}: {hypervisor.platform.post.writes} "
                                 f"writes reached the null device, expected {expect_out}")
    finally:
        hypervisor.close()
    handled = [ns for samples in observer.samples.values() for ns in samples]
    return Run(watch.wall, watch.cpu, result.exits, result.instructions, handled)


# ----- configurations and their measurements ----------------------------------------------------
@dataclass
class Config:
    """One row of the table: how to run the loop with and without the measured instruction."""
    key: str
    group: str                       # the table's sub-heading (guest mode)
    label: str
    run: Callable[[int, int], Run]   # (iterations, variant) -> one timed run
    baseline: str | None = None      # key of the row this one is divided by (the floor)
    native: str | None = None        # key of the native-engine row of the same loop
    target: float | None = None
    samples: list[float] = field(default_factory=list)        # wall clock
    cpu_samples: list[float] = field(default_factory=list)    # process CPU time
    handled_ns: list[int] = field(default_factory=list)


def engine_config(key, group, label, guest, engine, stats=False, **extra) -> Config:
    def run(iterations: int, variant: int) -> Run:
        return run_engine(guest.with_params(iterations, variant), engine, stats,
                          iterations if variant == OUT else 0)
    return Config(key, group, label, run, **extra)


def bare_config(key, group, label, guest, mode, count=NO_LIMIT, **extra) -> Config:
    def run(iterations: int, variant: int) -> Run:
        return run_bare(guest, guest.with_params(iterations, variant), mode, count)
    return Config(key, group, label, run, **extra)


def rotated(items: list, shift: int) -> list:
    shift %= len(items)
    return items[shift:] + items[:shift]


def measure_exits(configs: list[Config], iterations: int, variant: int, reps: int,
                  progress) -> None:
    """Per repetition and configuration: µs per exit from the loop with and without the exit."""
    warm_up(configs, (EMPTY, variant))
    for rep in range(reps):
        for config in rotated(configs, rep):
            order = (variant, EMPTY) if rep % 2 else (EMPTY, variant)
            runs = {v: config.run(iterations, v) for v in order}
            with_exit, without = runs[variant], runs[EMPTY]
            config.samples.append((with_exit.seconds - without.seconds) / iterations * 1e6)
            config.cpu_samples.append(
                (with_exit.cpu_seconds - without.cpu_seconds) / iterations * 1e6)
            config.handled_ns += runs[variant].handled_ns
            progress()


def warm_up(configs: list[Config], variants: tuple[int, ...]) -> None:
    """One short, unrecorded run of every configuration and variant (imports, first decodes)."""
    for config in configs:
        for variant in variants:
            config.run(WARM_UP_PASSES, variant)


def measure_compute(configs: list[Config], iterations: int, reps: int, progress) -> dict:
    """Per repetition and configuration: wall seconds of the whole loop; instruction counts."""
    warm_up(configs, (EMPTY,))
    instructions: dict[str, int] = {}
    for rep in range(reps):
        for config in rotated(configs, rep):
            run = config.run(iterations, EMPTY)
            config.samples.append(run.seconds)
            config.cpu_samples.append(run.cpu_seconds)
            if run.instructions:
                instructions[config.key] = run.instructions
            progress()
    return instructions


# ----- the three benchmarks ---------------------------------------------------------------------
def out_configs(g16: Guest, g32: Guest) -> list[Config]:
    rows = []
    for mode, guest, bare_mode, group in (("real", g16, "real", "real mode"),
                                           ("pm", g32, "pm0", "32-bit protected mode")):
        floor, native = f"out.bare.{mode}", f"out.native.{mode}"
        rows += [
            bare_config(floor, group, "bare Cpu, on_out does nothing (floor)", guest, bare_mode),
            bare_config(f"out.bare_counted.{mode}", group, "bare Cpu, the same, run with a count",
                        guest, bare_mode, COUNTED, baseline=floor),
            engine_config(native, group, "native engine (devices on the CPU hook)", guest,
                          "native", baseline=floor),
            engine_config(f"out.trap.{mode}", group, "trap engine, exit fastpath", guest, "trap",
                          baseline=floor, native=native, target=TARGET_OUT_US),
            engine_config(f"out.trap_stats.{mode}", group,
                          "trap engine + ExitStats observer (VmExit records)", guest, "trap",
                          stats=True, baseline=floor, native=native),
        ]
    return rows


def cli_configs(g16: Guest, g32: Guest) -> list[Config]:
    rows = []
    for mode, guest, bare_mode, group in (
            ("real", g16, "v86", "real mode (trap: virtual-8086; floor: v8086 at CPL 3)"),
            ("pm", g32, "pm3", "32-bit protected mode (trap: ring 1; floor: CPL 3)")):
        floor = f"cli.bare.{mode}"
        rows += [
            bare_config(floor, group, "bare Cpu, take_exception + eip += 1 (floor)", guest,
                        bare_mode),
            engine_config(f"cli.native.{mode}", group, "native engine (CLI just runs, no trap)",
                          guest, "native"),
            engine_config(f"cli.trap.{mode}", group, "trap engine, exit fastpath", guest, "trap",
                          baseline=floor, target=TARGET_CLI_US),
            engine_config(f"cli.trap_stats.{mode}", group,
                          "trap engine + ExitStats observer (VmExit records)", guest, "trap",
                          stats=True, baseline=floor),
        ]
    return rows


def compute_configs(guest: Guest) -> list[Config]:
    group = "32-bit protected mode, ring 0 (trap: ring 1)"
    return [
        bare_config("compute.bare", group, "bare Cpu, one uc_emu_start, no count (floor)", guest,
                    "pm0"),
        bare_config("compute.bare_counted", group,
                    "bare Cpu, one uc_emu_start with a count", guest, "pm0",
                    COUNTED, baseline="compute.bare"),
        engine_config("compute.native", group, "native engine", guest, "native",
                      baseline="compute.bare"),
        engine_config("compute.trap", group, "trap engine", guest, "trap",
                      baseline="compute.bare", native="compute.native",
                      target=TARGET_COMPUTE_RATIO),
    ]


# ----- summaries, table, JSON -------------------------------------------------------------------
def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def ratio(a: float, b: float) -> float | None:
    return a / b if b and b > 0 else None


def summarize(configs: list[Config], unit: str, instructions: dict | None = None) -> list[dict]:
    """One JSON-ready row per configuration: wall-clock median/min and ratios (the table), the
    same from process CPU time, raw samples, target verdicts."""
    by_key = {c.key: c for c in configs}
    rows = []
    for c in configs:
        row = {"key": c.key, "group": c.group, "label": c.label, "unit": unit,
               **stats(c.samples, c, by_key, lambda other: other.samples),
               "cpu_time": stats(c.cpu_samples, c, by_key, lambda other: other.cpu_samples)}
        if c.handled_ns:
            row["exitstats_avg_us"] = sum(c.handled_ns) / len(c.handled_ns) / 1e3
        if instructions is not None:
            count = instructions.get(c.key) or instructions.get("compute.bare_counted", 0)
            row["instructions"] = count
            row["minsn_per_s"] = count / row["median"] / 1e6 if count else None
        if c.target is not None:
            measured = row["x_native_paired"] if unit == "s" else row["median"]
            row["target"] = c.target
            row["meets_target"] = measured is not None and measured <= c.target
        rows.append(row)
    return rows


def stats(samples: list[float], config: Config, by_key: dict, pick) -> dict:
    """Median, min and the ratios to the floor and native rows: of the medians, of the minima,
    and the median of per-repetition ratios (runs of one repetition are close in time)."""
    result = {"samples": samples, "median": median(samples), "min": min(samples)}
    for name, other in (("x_floor", config.baseline), ("x_native", config.native)):
        if other:
            theirs = pick(by_key[other])
            result[name] = ratio(result["median"], median(theirs))
            result[name + "_of_min"] = ratio(result["min"], min(theirs))
            result[name + "_paired"] = median([ratio(a, b) or float("nan")
                                               for a, b in zip(samples, theirs)])
    return result


def fmt(value, spec: str, width: int) -> str:
    return f"{value:{width}{spec}}" if value is not None else " " * (width - 1) + "-"


def grouped(rows: list[dict], line) -> list[str]:
    """One line per row, under a sub-heading whenever the group changes."""
    lines, group = [], None
    for r in rows:
        if r["group"] != group:
            group = r["group"]
            lines.append(f"  {group}")
        lines.append(line(r))
    return lines


def verdict(r: dict, template: str) -> str:
    """'' for rows without a target, else the target (formatted into template) and ok/MISSED."""
    if "target" not in r:
        return ""
    return f"{template.format(r['target'])} {'ok' if r['meets_target'] else 'MISSED'}"


def exit_table(title: str, rows: list[dict]) -> list[str]:
    header = (f"  {'':<52} {'median':>7} {'min':>7} {'x floor':>8} {'x native':>8} "
              f"{'VMM-side':>8}  target")

    def line(r: dict) -> str:
        return (f"    {r['label']:<50} {r['median']:7.3f} {r['min']:7.3f} "
                f"{fmt(r.get('x_floor'), '.2f', 8)} {fmt(r.get('x_native'), '.2f', 8)} "
                f"{fmt(r.get('exitstats_avg_us'), '.3f', 8)}  "
                f"{verdict(r, '<= {:.0f} us')}").rstrip()
    return [title, header] + grouped(rows, line)


def compute_table(title: str, rows: list[dict]) -> list[str]:
    header = (f"  {'':<52} {'median':>7} {'min':>7} {'Minsn/s':>8} {'x floor':>8} "
              f"{'x native':>8} {'paired':>8}  target")

    def line(r: dict) -> str:
        return (f"    {r['label']:<50} {r['median']:7.3f} {r['min']:7.3f} "
                f"{fmt(r.get('minsn_per_s'), '.1f', 8)} {fmt(r.get('x_floor'), '.2f', 8)} "
                f"{fmt(r.get('x_native'), '.3f', 8)} {fmt(r.get('x_native_paired'), '.3f', 8)}  "
                f"{verdict(r, 'trap/native <= {:.2f}')}").rstrip()
    return [title, header] + grouped(rows, line)


def machine() -> dict:
    model = next((line.split(":", 1)[1].strip() for line in
                  Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    try:
        commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return {"python": platform.python_version(), "unicorn": unicorn.__version__,
            "cpu": model, "cpus": os.cpu_count(), "platform": platform.platform(),
            "commit": commit or None, "loadavg_start": os.getloadavg()[0]}


def render(info: dict, sizes: Sizes, sections: dict) -> str:
    out, cli, compute = sections["out"], sections["cli"], sections["compute"]
    lines = [f"trapvisor exit-cost benchmarks: commit {info['commit']}, python {info['python']}, "
             f"unicorn {info['unicorn']}, {info['cpus']} x {info['cpu']}",
             f"  load average {info['loadavg_start']:.2f} -> {info['loadavg_end']:.2f} during the "
             f"{info['seconds']:.0f} s run; wall-clock median and min of {sizes.reps} interleaved "
             "runs",
             "  x floor / x native = this row's median / that row's median; paired = median of the "
             "per-repetition ratios (the CPU-bound target is judged on it)",
             "  VMM-side = ExitStats' mean exit-to-entry time (record built -> guest re-entered)",
             ""]
    lines += exit_table(f"1. OUT 0x80 -> null device, µs per exit round trip "
                        f"({sizes.out} exits per run)", out) + [""]
    lines += exit_table(f"2. CLI at guest ring 0, µs per trap ({sizes.cli} traps per run)",
                        cli) + [""]
    lines += compute_table(f"3. CPU-bound guest, s per run ({sizes.compute} passes x 10 "
                           "instructions, no exits)", compute)
    return "\n".join(lines)


# ----- main -------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="fewer passes and repetitions (about 12 s)")
    parser.add_argument("--reps", type=int, help="repetitions per configuration (default "
                        f"{FULL.reps}, {QUICK.reps} with --quick)")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON,
                        help="where to write the results "
                        f"(default {DEFAULT_JSON.relative_to(REPO)})")
    return parser.parse_args(argv)


def run_all(sizes: Sizes) -> dict:
    """Measure the three benchmarks; return their JSON-ready sections."""
    g16, g32, g_compute = Guest.load("exits16"), Guest.load("exits32"), Guest.load("compute32")
    outs, clis, computes = out_configs(g16, g32), cli_configs(g16, g32), compute_configs(g_compute)
    total = sizes.reps * (len(outs) + len(clis) + len(computes))
    done = [0]
    tty = sys.stderr.isatty()

    def progress() -> None:
        done[0] += 1
        if tty:
            print(f"\r  running: {done[0]}/{total}", end="", file=sys.stderr, flush=True)

    measure_exits(outs, sizes.out, OUT, sizes.reps, progress)
    measure_exits(clis, sizes.cli, CLI, sizes.reps, progress)
    instructions = measure_compute(computes, sizes.compute, sizes.reps, progress)
    if tty:
        print(file=sys.stderr)
    return {"out": summarize(outs, "us"), "cli": summarize(clis, "us"),
            "compute": summarize(computes, "s", instructions)}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = QUICK if args.quick else FULL
    if args.reps:
        sizes = dataclasses.replace(sizes, reps=max(1, args.reps))
    info = machine()
    started = time.perf_counter()
    sections = run_all(sizes)
    info["seconds"] = time.perf_counter() - started
    info["loadavg_end"] = os.getloadavg()[0]
    print(render(info, sizes, sections))
    report = {"machine": info, "sizes": dataclasses.asdict(sizes), "quick": args.quick,
              "targets": {"out_us": TARGET_OUT_US, "cli_us": TARGET_CLI_US,
                          "compute_trap_over_native": TARGET_COMPUTE_RATIO},
              "benchmarks": sections}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nresults written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
