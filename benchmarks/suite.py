"""`trapvisor bench`, the one runner of the benchmarks: parse its options, run the benchmarks on
this machine in one run, show progress on stderr, print their tables, and write every figure as
a JSON record (--json) and a chart (--plot).

Benchmarks: exits (exit cost by kind, and the OUT/CLI trap paths), nano (Adams & Agesen), cpu
(CPU-bound overhead), micro (monolithic against micro), peers (QEMU, and Unicorn's loads against
stores), scale (1..16 guests). Engines come from vmm.engines.ENGINES and hypervisors from whether
hypervisors.micro imports, so new ones are measured as they land.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from importlib.metadata import version
from pathlib import Path

from benchmarks import bt_callouts, kinds, nano, overhead, partition, peers, scale
from benchmarks.harness import engines, hypervisors
from benchmarks.loops import Context

BENCHMARKS = {module.NAME: module for module in (kinds, nano, overhead, partition, peers, scale,
                                                  bt_callouts)}
REPS = {True: 1, False: 7}


class Progress:
    """One stderr line per step: rewritten in place on a terminal, appended otherwise."""

    def __init__(self, stream=sys.stderr):
        self.stream = stream
        self.tty = stream.isatty()
        self.started = time.perf_counter()
        self.benchmark = ""

    def __call__(self, message: str) -> None:
        text = f"[{time.perf_counter() - self.started:6.1f} s] {self.benchmark}: {message}"
        if self.tty:
            self.stream.write(f"\r\x1b[K{text}")
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def done(self) -> None:
        if self.tty:
            self.stream.write("\r\x1b[K")
            self.stream.flush()


def build_parser() -> argparse.ArgumentParser:
    """The options of `trapvisor bench` (the CLI hands them over unparsed)."""
    parser = argparse.ArgumentParser(
        prog="trapvisor bench", description="Measure exit costs, engines and hypervisors on this "
        "machine and print tables (progress on stderr). See benchmarks/README.md.")
    parser.add_argument("--quick", action="store_true",
                        help="1 repetition and short runs: about a minute (what CI runs)")
    parser.add_argument("--only", metavar="NAME,...", type=selection,
                        help=f"run only these benchmarks ({', '.join(BENCHMARKS)})")
    parser.add_argument("--reps", metavar="N", type=int, help="repetitions (default 7, 1 quick)")
    parser.add_argument("--json", metavar="FILE", type=Path, help="write every figure as a record")
    parser.add_argument("--plot", metavar="FILE.png", type=Path,
                        help="draw the figures (needs matplotlib: pip install 'trapvisor[bench]')")
    return parser


def selection(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in BENCHMARKS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown benchmark {', '.join(unknown) or text!r}; "
                                         f"choose from {', '.join(BENCHMARKS)}")
    return names


def machine() -> dict:
    model = next((line.split(":", 1)[1].strip() for line in
                  Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    return {"python": platform.python_version(), "unicorn": version("unicorn"), "cpu": model,
            "cpus": os.cpu_count(), "loadavg_start": os.getloadavg()[0]}


def header(info: dict, ctx: Context) -> list[str]:
    hyps = ", ".join(name if not isinstance(cls, str) else f"{name} (absent: {cls})"
                     for name, cls in ctx.hypervisors.items())
    lines = [f"trapvisor bench{' --quick' if ctx.quick else ''}: python {info['python']}, unicorn "
             f"{info['unicorn']}, {info['cpus']} x {info['cpu']}",
             f"  engines: {', '.join(ctx.engines)}; hypervisors: {hyps}",
             f"  {ctx.reps} repetition{'s, interleaved' if ctx.reps > 1 else ''}; load average "
             f"{info['loadavg_start']:.2f} -> {info['loadavg_end']:.2f} over "
             f"{info['seconds']:.0f} s"]
    if ctx.reps == 1:
        lines.append("  one repetition: every figure is a single sample (p10 = p90 = median), so "
                     "verdicts, goals and ratios are indicative only")
    return lines + [""]


def run_all(ctx: Context, names: list[str], progress: Progress) -> list:
    sections = []
    for name in names:
        progress.benchmark = name
        progress("starting")
        sections.append(BENCHMARKS[name].run(ctx))
    progress.done()
    return sections


def main(argv: list[str]) -> int:
    """The `bench` subcommand: argv is what follows `trapvisor bench`."""
    args = build_parser().parse_args(argv)
    if args.plot is not None:
        from benchmarks import plot
        plot.require()                      # a clear error before an hour of measuring
    progress = Progress()
    reps = max(1, args.reps) if args.reps else REPS[args.quick]
    ctx = Context(args.quick, reps, engines(), hypervisors(), progress)
    info = machine()
    started = time.perf_counter()
    sections = run_all(ctx, args.only or list(BENCHMARKS), progress)
    info["seconds"], info["loadavg_end"] = time.perf_counter() - started, os.getloadavg()[0]
    lines = header(info, ctx)
    for section in sections:
        lines += [section.title, *section.lines, ""]
    print("\n".join(lines).rstrip())
    records = [r for section in sections for r in section.records]
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "quick": args.quick, "reps": reps,
                                         "records": records}, indent=1) + "\n")
        print(f"\n{len(records)} records written to {args.json}")
    if args.plot:
        plot.draw(records, args.plot)
        print(f"chart written to {args.plot}")
    return 0
