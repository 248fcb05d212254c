"""Benchmark 4, monolithic against micro: emulated port I/O forwarded to the parent partition
against the same I/O handled in-process, VMBus console throughput against the emulated 16550
UART, and block-device MB/s. Each figure needs the micro hypervisor (hypervisors/micro) and, for
VMBus, its guests (guests/vmbus-console.asm); the measurements themselves live in
benchmarks/micro_io.py and benchmarks/vmbus_console.py (written with the micro hypervisor), each
of which is to provide ``bench_records(quick: bool) -> list[dict]`` (records as in
benchmarks/records.py). Until they exist this section
says, per figure, what is missing.
"""
from __future__ import annotations

from pathlib import Path

import guests
from benchmarks.loops import Context
from benchmarks.records import Section, missing

NAME = "micro"
TITLE = "4. Monolithic against micro hypervisor"
HERE = Path(__file__).resolve().parent
FIGURES = {   # metric -> (unit, the module that measures it, the guest it needs or None)
    "forwarded_io_x_in_process": ("ratio", "micro_io", None),
    "vmbus_console_x_uart": ("ratio", "vmbus_console", "vmbus-console"),
    "block_mb_per_second": ("MB/s", "vmbus_console", "vmbus-block"),
}


def why_not(ctx: Context, module: str, guest: str | None) -> str | None:
    """What is missing for a figure, or None when everything it needs is here."""
    if isinstance(ctx.hypervisors.get("micro"), str):
        return f"micro hypervisor not available: {ctx.hypervisors['micro']}"
    if guest and not guests.path(guest).is_file():
        return f"guest {guest} not available (guests/{guest}.asm)"
    if not (HERE / f"{module}.py").is_file():
        return f"benchmarks/{module}.py not written yet"
    return None


def load(module: str):
    """The measuring module (static imports: both are optional files of this package)."""
    if module == "micro_io":
        from benchmarks import micro_io
        return micro_io
    from benchmarks import vmbus_console
    return vmbus_console


def run(ctx: Context) -> Section:
    section = Section(NAME, TITLE)
    done: set[str] = set()
    for metric, (unit, module, guest) in FIGURES.items():
        reason = why_not(ctx, module, guest)
        if reason:
            section.lines.append(f"    {metric:<28} not available: {reason}")
            section.records.append(missing(NAME, "-", "micro", metric, unit, reason))
        elif module not in done:
            done.add(module)
            ctx.progress(f"benchmarks/{module}.py")
            section.records += delegate(module, ctx.quick, section.lines)
    return section


def delegate(module: str, quick: bool, lines: list[str]) -> list[dict]:
    entry = getattr(load(module), "bench_records", None)
    if entry is None:
        reason = f"benchmarks/{module}.py has no bench_records(quick) entry point yet"
        lines.append(f"    {module:<28} not available: {reason}")
        return [missing(NAME, "-", "micro", module, "-", reason)]
    try:
        records = list(entry(quick))
    except Exception as exc:  # noqa: BLE001  (a sibling benchmark's failure is reported, not fatal)
        reason = f"benchmarks/{module}.py failed: {type(exc).__name__}: {exc}"
        lines.append(f"    {module:<28} {reason}")
        return [missing(NAME, "-", "micro", module, "-", reason)]
    for r in records:
        value = "null: " + r.get("reason", "") if r.get("value") is None else f"{r['value']:.4g}"
        lines.append(f"    {r['engine']}/{r['hypervisor']} {r['metric']:<28} {value} {r['unit']}")
    return records
