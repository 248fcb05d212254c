"""Benchmark 2, Adams & Agesen (ASPLOS 2006) reproduced: their nanobenchmarks (guests/nano-*.asm)
under every engine of the monolithic hypervisor, µs and exits per iteration, printed beside the
published cycles and ratios (shared/notes/anchors.md), with a verdict per row, computed from the
measured numbers, on whether the paper's qualitative pattern holds: binary translation beats
VT-x-style exits on in, ptemod, crwrite and pgfault; VT-x-style beats BT on syscall, callret and
divzero (it runs them natively, BT pays translation or callouts).
"""
from __future__ import annotations

from benchmarks.loops import Context
from benchmarks.records import (MIN_REPS, NOT_ENOUGH_REPS, Section, fmt, missing, ratio,
                                ratio_of, record)

NAME = "nano"
TITLE = ("2. Adams & Agesen nanobenchmarks: µs per iteration (exits per iteration), "
         "monolithic hypervisor")
HYPERVISOR = "monolithic"
US = "_us_per_iteration"
# test -> (published native, BT, VT-x in cycles as printed, the engine that wins, and why)
PUBLISHED = {
    "syscall": ("-", "native+~2000", "native", "vtx",
                "VT-x runs the guest's INT/IRET natively; BT translates the kernel entry"),
    "in": ("3209", "~214 (15x faster)", "15826", "bt",
           "BT emulates IN inside the VMM's context; VT-x pays a world switch per IN"),
    "crwrite": ("~140", "35", "~native", "bt",
                "BT rewrites the CR write onto virtual CPU state inline"),
    "callret": ("11", "51", "11", "vtx", "BT pays for translated indirect control flow"),
    "pgfault": ("1093", "3927", "11242", "bt",
                "without EPT every guest #PF is a VT-x exit; BT's shadow fault path is shorter"),
    "divzero": ("889", "3223", "1014", "vtx",
                "VT-x delivers the guest's own exception natively"),
    "ptemod": ("1 store", "391", "12733", "bt",
               "BT's traced PTE store is a callout; VT-x (no EPT) exits on the write-protected "
               "page table"),
}


def run(ctx: Context) -> Section:
    ctx.ensure_loops([f"nano-{test}" for test in PUBLISHED])
    section = Section(NAME, TITLE)
    engines = ctx.engines
    section.lines.append("    " + f"{'test':<8}" + "".join(f"{e:>20}" for e in engines)
                         + f"   {'published native / BT / VT-x cycles':<40}")
    for test, published in PUBLISHED.items():
        cells = []
        for engine in engines:
            cell, records = measured(ctx, test, engine)
            cells.append(cell)
            section.records += records
        section.lines.append(f"    {test:<8}" + "".join(f"{c:>20}" for c in cells)
                             + f"   {' / '.join(published[:3]):<40}")
    section.lines += [f"    {r['metric'].removesuffix(US)} {r['engine']}: not measured: "
                      f"{r['reason']}" for r in section.records
                      if r["value"] is None and r["metric"].endswith(US)]
    section.lines.append("  verdicts (computed from the µs per iteration above):")
    for test in PUBLISHED:
        text, rec = verdict(ctx, test)
        section.lines.append(f"    {test:<8} {text}")
        section.records.append(rec)
    return section


def us_record(ctx: Context, test: str, engine: str) -> dict | None:
    """The µs-per-iteration record of one test under one engine (null when the run failed or
    its difference is no timing), or None when the engine does not exist here."""
    if engine not in ctx.engines:
        return None
    return ctx.loop(f"nano-{test}", engine, HYPERVISOR).figure(NAME, f"{test}{US}")


def median_us(ctx: Context, test: str, engine: str) -> float | None:
    found = us_record(ctx, test, engine)
    return found["value"] if found else None


def measured(ctx: Context, test: str, engine: str) -> tuple[str, list[dict]]:
    main = us_record(ctx, test, engine)
    loop = ctx.loop(f"nano-{test}", engine, HYPERVISOR)
    if loop.error:
        return "failed", [main]
    exits = loop.exits_per_iteration
    records = [main, record(NAME, engine, HYPERVISOR, f"{test}_exits_per_iteration", exits,
                            "exits")]
    us = main["value"]
    if us is None:
        return f"not measured ({exits:.2f})", records
    if engine != "native":
        records.append(ratio_of(NAME, engine, HYPERVISOR, f"{test}_x_native", main,
                                us_record(ctx, test, "native"), paired=True))
    return f"{us:8.3f} ({exits:.2f})", records


def verdict(ctx: Context, test: str) -> tuple[str, dict]:
    """Whether the published winner (bt or vtx) also wins here, with the measured ratio."""
    *_, winner, why = PUBLISHED[test]
    absent = [f"{e} {'not measured' if e in ctx.engines else 'missing'}" for e in ("bt", "vtx")
              if median_us(ctx, test, e) is None]
    if absent:
        reason = f"engine {', '.join(absent)}"
        trap = ratio(median_us(ctx, test, "trap"), median_us(ctx, test, "native"))
        note = f"; trap/native here {trap:.2f}x" if trap else ""
        return (f"not measured: {reason}; published: {winner} wins ({why}){note}",
                missing(NAME, "bt,vtx", HYPERVISOR, f"{test}_pattern_holds", "bool", reason))
    loser = "vtx" if winner == "bt" else "bt"
    theirs = {e: us_record(ctx, test, e) for e in ("bt", "vtx")}
    win, lose = theirs[winner], theirs[loser]
    exits = {e: ctx.loop(f"nano-{test}", e, HYPERVISOR).exits_per_iteration for e in ("bt", "vtx")}
    figures = (f"{winner} {win['value']:.3f} µs [{win['min']:.3f}..{win['max']:.3f}] vs {loser} "
               f"{lose['value']:.3f} µs [{lose['min']:.3f}..{lose['max']:.3f}] "
               f"({lose['value'] / win['value']:.2f}x); exits/iter bt "
               f"{fmt(exits['bt'], '.2f', 0)}, vtx {fmt(exits['vtx'], '.2f', 0)}")
    fields = {"winner": winner, "bt_us": theirs["bt"]["value"], "vtx_us": theirs["vtx"]["value"]}
    n = min(win["n"], lose["n"])
    if n < MIN_REPS:
        reason = f"{NOT_ENOUGH_REPS} ({n} < {MIN_REPS})"
        return (f"{reason}: {figures}; published: {why}",
                missing(NAME, "bt,vtx", HYPERVISOR, f"{test}_pattern_holds", "bool", reason,
                        **fields))
    holds = separated(win, lose)
    text = {True: "holds", False: "DIFFERS", None: "undecided (the spreads overlap)"}[holds]
    return (f"{text}: {figures}; published: {why}",
            derived_verdict(test, holds, n, fields))


def separated(win: dict, lose: dict) -> bool | None:
    """True when every repetition of the winner beat every one of the loser, False for the
    reverse, None when their ranges overlap."""
    if win["max"] < lose["min"]:
        return True
    if lose["max"] < win["min"]:
        return False
    return None


def derived_verdict(test: str, holds: bool | None, n: int, fields: dict) -> dict:
    metric = f"{test}_pattern_holds"
    if holds is None:
        return missing(NAME, "bt,vtx", HYPERVISOR, metric, "bool",
                       "the bt and vtx ranges overlap: no winner at this spread", n=n, **fields)
    return record(NAME, "bt,vtx", HYPERVISOR, metric, float(holds), "bool", n=n, **fields)
