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
from benchmarks.records import Section, fmt, missing, ratio, record, with_spread
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
    for test in PUBLISHED:
        cells = []
        for config, (engine, cls) in CONFIGS.items():
            cell, records = measured(loops[test, config], test, config, engine, cls)
            cells.append(cell)
            section.records += records
        section.lines.append(f"    {test:<8}" + "".join(f"{c:>28}" for c in cells)
                             + f"   {PUBLISHED[test][3]}")
    section.lines.append("  verdicts (bt against vtx --ept off, from the figures above):")
    for test in PUBLISHED:
        text, rec = verdict(loops, test)
        section.lines.append(f"    {test:<8} {text}")
        section.records.append(rec)
    return section


def measured(loop: Loop, test: str, config: str, engine: str, cls) -> tuple[str, list[dict]]:
    metric = f"{test}_us_per_iteration"
    if not loop.us_per_iteration:
        return "failed", [missing(NAME, config, "monolithic", metric, "us",
                                  f"the run failed: {loop.error}")]
    rec = with_spread(NAME, config, "monolithic", metric, loop.us_per_iteration, "us")
    hidden = hidden_faults_per_iteration(loop.guest, engine, cls)
    records = [rec, record(NAME, config, "monolithic", f"{test}_exits_per_iteration",
                           loop.exits_per_iteration, "exits"),
               record(NAME, config, "monolithic", f"{test}_hidden_faults_per_iteration",
                      hidden, "faults")]
    return (f"{fmt(rec['value'])} ({loop.exits_per_iteration:.1f} ex, {hidden:.1f} hpf)",
            records)


def verdict(loops: dict, test: str) -> tuple[str, dict]:
    bt, vtx = (loops[test, c] for c in COMPARED)
    medians = [with_spread(NAME, "", "", "", loop.us_per_iteration, "us")["value"]
               if loop.us_per_iteration else None for loop in (bt, vtx)]
    faster = ratio(medians[1], medians[0])
    metric = f"{test}_bt_speedup_over_vtx_ept_off"
    if faster is None:
        reason = ("a run failed" if bt.error or vtx.error else
                  "a median per iteration is not positive: the loop is below this run's noise")
        return f"not measured: {reason}", missing(NAME, "bt", "monolithic", metric, "ratio",
                                                  reason)
    winner = "bt" if faster > 1 else "vtx"
    holds = winner == PUBLISHED[test][3]
    why = (f"bt {bt.exits_per_iteration:.1f} exits/iteration, vtx --ept off "
           f"{vtx.exits_per_iteration:.1f}")
    text = (f"{winner} wins ({faster:.2f}x bt speed-up); the paper's pattern "
            f"{'holds' if holds else 'differs'}: {why}")
    return text, record(NAME, "bt", "monolithic", metric, faster, "ratio", holds=holds)
