"""Benchmark 4, monolithic against micro: emulated port I/O forwarded to the parent partition
against the same I/O handled in-process (micro_io.py), VMBus console throughput against the
emulated 16550 UART and block-device MB/s (vmbus_console.py). Each figure needs the micro
hypervisor (hypervisors/micro) and, for VMBus, its guests (guests/vmbus-console.asm,
guests/vmbus-block.asm); without them this section says, per figure, what is missing. The
measuring modules hand back their records through ``bench_records(quick)``.
"""
from __future__ import annotations

import guests
from benchmarks.loops import Context
from benchmarks.records import Section, missing, value_text

NAME = "micro"
TITLE = "4. Monolithic against micro hypervisor"
FIGURES = {   # metric -> (unit, the module that measures it, the guest it needs or None)
    "forwarded_io_x_in_process": ("ratio", "micro_io", None),
    "vmbus_console_x_uart": ("ratio", "vmbus_console", "vmbus-console"),
    "block_mb_per_second": ("MB/s", "vmbus_console", "vmbus-block"),
}


def why_not(ctx: Context, guest: str | None) -> str | None:
    """What is missing for a figure, or None when everything it needs is here."""
    if isinstance(ctx.hypervisors.get("micro"), str):
        return f"micro hypervisor not available: {ctx.hypervisors['micro']}"
    if guest and not guests.path(guest).is_file():
        return f"guest {guest} not available (guests/{guest}.asm)"
    return None


def load(module: str):
    """The measuring module, imported only once the micro hypervisor is known to import."""
    if module == "micro_io":
        from benchmarks import micro_io
        return micro_io
    from benchmarks import vmbus_console
    return vmbus_console


def run(ctx: Context) -> Section:
    section = Section(NAME, TITLE)
    done: set[str] = set()
    for metric, (unit, module, guest) in FIGURES.items():
        reason = why_not(ctx, guest)
        if reason:
            section.lines.append(f"    {metric:<28} not measured: {reason}")
            section.records.append(missing(NAME, "-", "micro", metric, unit, reason))
        elif module not in done:
            done.add(module)
            ctx.progress(f"benchmarks/{module}.py")
            section.records += delegate(module, ctx.quick, section.lines)
    return section


def delegate(module: str, quick: bool, lines: list[str]) -> list[dict]:
    try:
        records = load(module).bench_records(quick)
    except Exception as exc:  # noqa: BLE001  (a sibling benchmark's failure is reported, not fatal)
        reason = f"benchmarks/{module}.py failed: {type(exc).__name__}: {exc}"
        lines.append(f"    {module:<28} {reason}")
        return [missing(NAME, "-", "micro", module, "-", reason)]
    lines += [f"    {r['engine'] + '/' + r['hypervisor']:<16} {r['metric']:<40} {value_text(r)}"
              + (f"  channel: {r['channel']}" if "channel" in r else "") for r in records]
    return records
