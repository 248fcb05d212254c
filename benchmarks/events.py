"""Benchmark "events": what one guest exception or interrupt costs under each engine, as a ratio to
the bare fault-hook floor measured in the same run (issue 12: at most 10x under native).

Events, each a loop guest of nano.inc style (32-bit protected mode, ring 0 unless named): #DE
(DIV by zero, guests/nano-divzero.asm), #UD (UD2, benchmarks/guests/exit-ud.asm), INT 0x80 from
ring 3 through a DPL-3 gate and the TSS stack (guests/nano-syscall.asm), #PF on a not-present
page whose handler maps it (guests/nano-pgfault.asm: the loop also unmaps the page and INVLPGs
it), and a PIT tick waking STI; HLT (benchmarks/guests/exit-hlt.asm: the handler sends the PIC
an EOI). A guest iteration is the event, its handler and the handler's IRETD; µs per iteration
comes from the shared loop measurement (loops.py: N and N/5 iterations, the difference divided,
so boot and report are not timed). The floor is loops.py's "fault" floor on emu.cpu.Cpu with no
VMM: #GP at CPL 3 -> the interrupt hook -> take_exception, EIP += 1, resume.
"""
from __future__ import annotations

from benchmarks.loops import Context
from benchmarks.records import Section, fmt, missing, ratio_of, verdict

NAME = "events"
TITLE = ("Events: µs per guest iteration (event + handler + IRETD; median, p10-p90) and x the "
         "bare fault-hook floor")
HYPERVISOR = "monolithic"
FLOOR = "fault"
GOAL_X_FLOOR = 10.0          # native, issue 12
GOAL_ENGINE = "native"
# event -> (loop guest, what one iteration does)
EVENTS = {
    "de": ("nano-divzero", "#DE: DIV by 0 at ring 0 -> interrupt gate"),
    "ud": ("exit-ud", "#UD: UD2 at ring 0 -> interrupt gate"),
    "int80_ring3": ("nano-syscall", "INT 0x80 from ring 3 -> DPL-3 gate, TSS stack"),
    "pf": ("nano-pgfault", "#PF on a not-present page, handler maps it; unmap + INVLPG"),
    "timer_hlt": ("exit-hlt", "PIT tick wakes STI; HLT -> interrupt gate, EOI"),
}
# the goal is for guest exceptions; a wake-up from HLT also ends and restarts the CPU's run
NO_GOAL = {"timer_hlt": "no goal: a wake-up also ends and restarts the CPU's run"}


def run(ctx: Context) -> Section:
    ctx.ensure_floors()
    ctx.ensure_loops([guest for guest, _ in EVENTS.values()], HYPERVISOR)
    section = Section(NAME, TITLE)
    floor = ctx.floors[FLOOR]
    floor_record = floor.figure(NAME)
    section.records.append(floor_record)
    floor_us = floor_record["value"]
    section.lines.append(f"  floor: {fmt(floor_us)} µs  {floor.description}; goal: "
                         f"{GOAL_ENGINE} <= {GOAL_X_FLOOR:g}x floor for exceptions")
    section.lines.append(f"    {'engine':<8} {'µs/iter':>8} {'p10':>8} {'p90':>8} "
                         f"{'exits/it':>8} {'x floor':>8}  goal")
    for event, (guest, what) in EVENTS.items():
        section.lines.append(f"  {event}: {what} ({guest})")
        for engine in ctx.engines:
            line, records = row(ctx, event, guest, engine, floor_record)
            section.lines.append(line)
            section.records += records
    return section


def row(ctx: Context, event: str, guest: str, engine: str,
        floor_record: dict) -> tuple[str, list[dict]]:
    """One event under one engine: its table line and records."""
    metric = f"{event}_us_per_iteration"
    loop = ctx.loop(guest, engine, HYPERVISOR)
    if loop is None or loop.error:
        reason = f"the run failed: {loop.error}" if loop else "not measured"
        return (f"    {engine:<8} not measured: {reason}",
                [missing(NAME, engine, HYPERVISOR, metric, "us", reason)])
    main = loop.figure(NAME, metric)
    main["exits_per_iteration"] = loop.exits_per_iteration
    x_floor = ratio_of(NAME, engine, HYPERVISOR, f"{event}_x_floor", main, floor_record)
    records = [main, x_floor]
    us = main["value"]
    if us is None:
        return f"    {engine:<8} not measured: {main['reason']}", records
    judged = NO_GOAL.get(event, "") if engine == GOAL_ENGINE else ""
    times = x_floor["value"]
    if engine == GOAL_ENGINE and event not in NO_GOAL:
        judged = verdict(x_floor, GOAL_X_FLOOR, unit="x")
    line = (f"    {engine:<8} {us:8.3f} {fmt(main.get('p10'))} {fmt(main.get('p90'))} "
            f"{fmt(loop.exits_per_iteration, '.2f')} {fmt(times, '.2f')}  {judged}").rstrip()
    return line, records
