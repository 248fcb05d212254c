"""`trapvisor bench`, the one runner of the benchmarks: parse its options, run the benchmarks on
this machine in one run, show progress on stderr, print their tables, and write every figure as
a JSON record (--json) and a chart (--plot).

Benchmarks: exits (exit cost by kind, and the OUT/CLI trap paths), nano (Adams & Agesen), cpu
(CPU-bound overhead), micro (monolithic against micro), peers (QEMU, and Unicorn's loads against
stores), scale (1..16 guests), xv6 (to its first prompt, beside QEMU). Engines come from
vmm.engines.ENGINES and hypervisors from whether hypervisors.micro imports, so new ones are
measured as they land.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
import time
from importlib.metadata import version
from pathlib import Path

from benchmarks.harness import engines, hypervisors
from benchmarks.loops import Context
from benchmarks.records import MIN_REPS, Section, missing, screen

# The benchmarks, in the order they run: one module per line, each with NAME, TITLE and
# run(ctx) -> records.Section (see benchmarks/harness.py). Add a line to register one.
MODULES = [
    "benchmarks.kinds",
    "benchmarks.bt_callouts",
    "benchmarks.events",
    "benchmarks.nano",
    "benchmarks.overhead",
    "benchmarks.partition",
    "benchmarks.peers",
    "benchmarks.scale",
    "benchmarks.mmu",
    "benchmarks.xv6",
    "benchmarks.apic",
    "benchmarks.vms",
]
BENCHMARKS = {module.NAME: module for module in map(importlib.import_module, MODULES)}
REPS = {True: 1, False: 7}
INDICATIVE = ("INDICATIVE ONLY (--quick): short runs, {reps} repetition(s) each; not figures to "
              "quote (verdicts need {min_reps} repetitions)")


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
                        help="1 repetition and short runs, labelled indicative: a few minutes "
                        "(what CI runs)")
    parser.add_argument("--only", metavar="NAME,...", type=selection,
                        help=f"run only these benchmarks ({', '.join(BENCHMARKS)})")
    parser.add_argument("--reps", metavar="N", type=repetitions,
                        help=f"repetitions (default 7, 1 quick; verdicts need {MIN_REPS})")
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


def repetitions(text: str) -> int:
    try:
        reps = int(text)
    except ValueError:
        reps = 0
    if reps < 1:
        raise argparse.ArgumentTypeError(f"want a whole number of at least 1, not {text!r}")
    return reps


def indicative(ctx: Context) -> str | None:
    """Why this run's figures are indicative only, or None."""
    if ctx.quick:
        return INDICATIVE.format(reps=ctx.reps, min_reps=MIN_REPS)
    if ctx.reps < MIN_REPS:
        return (f"INDICATIVE ONLY: {ctx.reps} repetition(s); no verdict is given below "
                f"{MIN_REPS} repetitions")
    return None


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
    label = indicative(ctx)
    if label:
        lines.insert(0, f"*** {label} ***")
    return lines + ["  every figure: median of the repetitions with its range (min, max); a "
                    "figure that cannot be taken says why", ""]


def run_all(ctx: Context, names: list[str], progress: Progress) -> list[Section]:
    sections = []
    for name in names:
        progress.benchmark = name
        progress("starting")
        sections.append(run_one(BENCHMARKS[name], ctx))
    progress.done()
    return sections


def run_one(module, ctx: Context) -> Section:
    """One benchmark's section; a benchmark that fails is reported in its section and as a
    null `failed` record (the suite goes on, and ends with status 1)."""
    try:
        return module.run(ctx)
    except Exception as exc:  # noqa: BLE001  (one broken benchmark must not hide the others)
        reason = f"{module.__name__} failed: {type(exc).__name__}: {first_line(exc)}"
        return Section(module.NAME, module.TITLE, [f"  not measured: {reason}"],
                       [missing(module.NAME, "-", "-", "failed", "-", reason)])


def first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


def main(argv: list[str]) -> int:
    """The `bench` subcommand: argv is what follows `trapvisor bench`."""
    args = build_parser().parse_args(argv)
    if args.plot is not None:
        from benchmarks import plot
        plot.require()                      # a clear error before an hour of measuring
    progress = Progress()
    reps = args.reps or REPS[args.quick]
    ctx = Context(args.quick, reps, engines(), hypervisors(), progress)
    info = machine()
    started = time.perf_counter()
    sections = run_all(ctx, args.only or list(BENCHMARKS), progress)
    info["seconds"], info["loadavg_end"] = time.perf_counter() - started, os.getloadavg()[0]
    lines = header(info, ctx)
    for section in sections:
        lines += [section.title, *section.lines, ""]
    records = [r for section in sections for r in section.records]
    caught = screen(records)
    if caught:
        lines += [f"WITHHELD {len(caught)} impossible figure(s) a benchmark did not catch:",
                  *(f"  {line}" for line in caught)]
    label = indicative(ctx)
    for r in records:
        r["indicative"] = label is not None
    print("\n".join(lines).rstrip())
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "quick": args.quick, "reps": reps,
                                         "indicative": label, "min_reps": MIN_REPS,
                                         "records": records}, indent=1) + "\n")
        print(f"\n{len(records)} records written to {args.json}")
    if args.plot:
        plot.draw(records, args.plot, label)
        print(f"chart written to {args.plot}")
    failed = [r["reason"] for r in records if r["metric"] == "failed"]
    for reason in failed:
        print(f"trapvisor bench: {reason}", file=sys.stderr)
    return 1 if failed else 0
