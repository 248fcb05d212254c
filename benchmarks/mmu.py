"""Benchmark: the MMU. Adams & Agesen's nanobenchmarks (guests/nano-*.asm) with binary
translation on shadow page tables (`bt`) against first-generation VT-x (`vtx --ept off`: shadow
page tables, CR3-load, INVLPG and #PF exits), the comparison their paper made: µs and exits per
iteration, and the hidden page faults per iteration (fills the shadow tables lacked, which the
guest never sees) under trap, bt and vtx --ept off. Each verdict is computed from the measured
figures, and a row that differs from the paper says so with the exits that explain it.
"""
from __future__ import annotations

from functools import partial

from benchmarks.harness import build, run_vm
from benchmarks.loops import Context, Loop, measure_loops
from benchmarks.nano import PUBLISHED
from benchmarks.records import (MIN_REPS, NOT_ENOUGH_REPS, Section, cost, fmt, missing, ratio_of,
                                record)
from hypervisors.monolithic import MonolithicHypervisor

NAME = "mmu"
TITLE = ("MMU: Adams & Agesen with bt (shadow paging) against vtx --ept off, µs per iteration "
         "(exits, hidden page faults per iteration), monolithic hypervisor")
CONFIGS = {"trap": ("trap", MonolithicHypervisor), "bt": ("bt", MonolithicHypervisor),
           "vtx-ept-off": ("vtx", partial(MonolithicHypervisor, ept=False))}
COMPARED = ("bt", "vtx-ept-off")
HIDDEN_N = (100, 500)


def hidden_faults_per_iteration(guest: str, engine: str, cls) -> float:
    """(hidden faults at N high - at N low) / (high - low): exact, the count is deterministic."""
    counts = []
    for n in HIDDEN_N:
        run_vm(build(guest, n), engine, cls,
               check=lambda vm: counts.append(vm.vcpu.engine.mmu.stats.hidden_faults))
    return (counts[1] - counts[0]) / (HIDDEN_N[1] - HIDDEN_N[0])


def run(ctx: Context) -> Section:
    section = Section(NAME, TITLE)
    loops = {}
    for test in PUBLISHED:
        for config, (engine, cls) in CONFIGS.items():
            loops[test, config] = Loop(f"nano-{test}", engine, config, cls)
    measure_loops(list(loops.values()), ctx.reps, ctx.target_seconds, ctx.progress)
    section.lines.append("    " + f"{'test':<8}" + "".join(f"{c:>28}" for c in CONFIGS)
                         + "   paper: winner")
    figures = {}
    for test in PUBLISHED:
        cells = []
        for config, (engine, cls) in CONFIGS.items():
            cell, records = measured(loops[test, config], test, config, engine, cls)
            figures[test, config] = records[0]
            cells.append(cell)
            section.records += records
        section.lines.append(f"    {test:<8}" + "".join(f"{c:>28}" for c in cells)
                             + f"   {PUBLISHED[test][3]}")
    section.lines.append("  verdicts (bt against vtx --ept off, from the figures above):")
    for test in PUBLISHED:
        text, rec = verdict(loops, figures, test)
        section.lines.append(f"    {test:<8} {text}")
        section.records.append(rec)
    return section


def measured(loop: Loop, test: str, config: str, engine: str, cls) -> tuple[str, list[dict]]:
    """The µs-per-iteration record first (records.cost: null when it is no timing), then exits
    and hidden page faults per iteration."""
    metric = f"{test}_us_per_iteration"
    if loop.error:
        return "failed", [missing(NAME, config, "monolithic", metric, "us",
                                  f"the run failed: {loop.error}")]
    rec = cost(NAME, config, "monolithic", metric, loop.high_s, loop.low_s, loop.span, "us",
               iterations=list(loop.n))
    hidden = hidden_faults_per_iteration(loop.guest, engine, cls)
    records = [rec, record(NAME, config, "monolithic", f"{test}_exits_per_iteration",
                           loop.exits_per_iteration, "exits"),
               record(NAME, config, "monolithic", f"{test}_hidden_faults_per_iteration",
                      hidden, "faults")]
    shown = fmt(rec["value"]) if rec["value"] is not None else "   n/m"
    return f"{shown} ({loop.exits_per_iteration:.1f} ex, {hidden:.1f} hpf)", records


def verdict(loops: dict, figures: dict, test: str) -> tuple[str, dict]:
    bt, vtx = (loops[test, c] for c in COMPARED)
    metric = f"{test}_bt_speedup_over_vtx_ept_off"
    speedup = ratio_of(NAME, "bt", "monolithic", metric, figures[test, COMPARED[1]],
                       figures[test, COMPARED[0]], paired=True)
    if speedup["value"] is None:
        return f"not measured: {speedup['reason']}", speedup
    faster = speedup["value"]
    n = speedup.get("n", 1)
    if n < MIN_REPS:
        return (f"{NOT_ENOUGH_REPS} ({n} < {MIN_REPS}) for a verdict: bt speed-up {faster:.2f}x",
                speedup)
    winner = "bt" if faster > 1 else "vtx"
    holds = winner == PUBLISHED[test][3]
    why = (f"bt {bt.exits_per_iteration:.1f} exits/iteration, vtx --ept off "
           f"{vtx.exits_per_iteration:.1f}")
    speedup["holds"] = holds
    return (f"{winner} wins ({faster:.2f}x bt speed-up, range {speedup.get('min', faster):.2f}.."
            f"{speedup.get('max', faster):.2f}); the paper's pattern "
            f"{'holds' if holds else 'differs'}: {why}"), speedup
