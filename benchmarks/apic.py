"""Benchmark "apic": what a read of the local APIC's ID register costs (xv6 reads it in every
lock: one read per ~65 instructions of its idle shell), under each engine with APIC
virtualization on (the default) and off (`--apicv off`: every read an EPT_VIOLATION exit), as
µs and exits per read and the ratio off / on, measured in the same run
(benchmarks/guests/apic-id.asm, loops.py's N and N/5 difference). Natively there is no
intercept, so the native row is the floor every engine shares: Unicorn's MMIO callback into the
APIC model.
"""
from __future__ import annotations

from functools import partial

from benchmarks.loops import Context, Loop, measure_loops
from benchmarks.records import Section, cost, fmt, missing, ratio_of, record
from hypervisors.monolithic import MonolithicHypervisor

NAME = "apic"
TITLE = ("APIC virtualization: µs and exits per APIC ID read, --apicv on and off, and off / on, "
         "monolithic hypervisor")
GUEST = "apic-id"
METRIC = "us_per_read"


def configs(engines: list[str]) -> dict[str, tuple[str, type]]:
    """config -> (engine, hypervisor class): native once, every other engine on and off."""
    found = {}
    for engine in engines:
        found[engine] = (engine, MonolithicHypervisor)
        if engine != "native":
            found[f"{engine}-apicv-off"] = (engine, partial(MonolithicHypervisor, apicv=False))
    return found


def run(ctx: Context) -> Section:
    section = Section(NAME, TITLE)
    table = configs(ctx.engines)
    loops = {config: Loop(GUEST, engine, config, cls) for config, (engine, cls) in table.items()}
    measure_loops(list(loops.values()), ctx.reps, ctx.target_seconds, ctx.progress)
    section.lines.append(f"    {'config':<18} {'µs/read':>8} {'p10':>8} {'p90':>8} "
                         f"{'exits/read':>10} {'off / on':>9}")
    figures = {}
    for config, loop in loops.items():
        figures[config] = figure = measured(loop, config)
        section.records += [figure] + ([] if loop.error else [record(
            NAME, config, "monolithic", "exits_per_read", loop.exits_per_iteration, "exits")])
        line = f"    {config:<18} "
        if figure["value"] is None:
            section.lines.append(line + f"not measured: {figure['reason']}")
            continue
        line += (f"{fmt(figure['value'])} {fmt(figure.get('p10'))} {fmt(figure.get('p90'))} "
                 f"{fmt(loop.exits_per_iteration, '.2f'):>10}")
        off = f"{config}-apicv-off"
        if off in loops:
            times = ratio_of(NAME, config, "monolithic", "apicv_off_over_on", figures.get(off)
                             or measured(loops[off], off), figure, paired=True)
            section.records.append(times)
            line += f" {fmt(times['value'], '.2f'):>9}"
        section.lines.append(line)
    return section


def measured(loop: Loop, config: str) -> dict:
    """µs per read over the repetitions (records.cost: null when it is no timing)."""
    if loop.error:
        return missing(NAME, config, "monolithic", METRIC, "us", f"the run failed: {loop.error}")
    return cost(NAME, config, "monolithic", METRIC, loop.high_s, loop.low_s, loop.span, "us",
                iterations=list(loop.n))
