"""bt callouts against trap's exits: what binary translation pays for a sensitive instruction in
guest kernel code, as a ratio to what trap-and-emulate pays for the same instruction, both
measured in the same run on the monolithic hypervisor.

Events (benchmarks/guests/callouts32.asm at guest ring 0, i.e. real ring 1 under trap and bt):
RDMSR and MOV from CR3 fault at ring 1 under both engines (bt carries them out with trap's #GP
hook and the site's plan); PUSHFD+POPFD and SMSW do not fault at ring 1: bt translates them
(callouts inside the run), trap misses them. Trap's exit for PUSHF+POPF is taken where it has
one, in virtual-8086 mode (callouts16.asm, IOPL 0: both instructions fault); SMSW faults nowhere
under trap, so its row has no ratio.

µs per event = (t(N passes with the event) - t(N passes of the empty loop)) / N, one pair per
repetition with the pair's order alternating, the repetitions rotating through every row. A run
counts only if the guest ends with status 0. Goal: bt <= 1.5x trap per event.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from benchmarks.harness import EMPTY_VARIANT, Guest, run_vm
from benchmarks.loops import Context, interleave
from benchmarks.records import Section, fmt, missing, ratio_of, record, verdict, with_spread

NAME = "bt_callouts"
TITLE = "bt callouts: µs per event (median, p10-p90), exits per event, bt / trap"
HYPERVISOR = "monolithic"
GOAL = 1.5
PASSES = {True: 2_000, False: 20_000}
# event -> (what, {engine: (guest, variant)}); trap's is its exit for the same instructions
EVENTS = {
    "rdmsr": ("RDMSR IA32_APIC_BASE at guest ring 0",
              {"trap": ("callouts32", 1), "bt": ("callouts32", 1)}),
    "mov_cr3": ("MOV EAX, CR3 at guest ring 0",
                {"trap": ("callouts32", 2), "bt": ("callouts32", 2)}),
    "pushf_popf": (("PUSHFD+POPFD at guest ring 0 (trap: PUSHF+POPF in virtual-8086 mode, where "
                    "it sees them)"), {"trap": ("callouts16", 3), "bt": ("callouts32", 3)}),
    "smsw": ("SMSW EAX at guest ring 0 (trap never sees it)", {"bt": ("callouts32", 4)}),
}


@dataclass
class Row:
    """One event under one engine, and its samples."""
    event: str
    engine: str
    guest: Guest
    variant: int
    passes: int
    us_per_event: list[float] = field(default_factory=list)
    exits_per_event: list[float] = field(default_factory=list)
    error: str | None = None

    @property
    def label(self) -> str:
        return f"{self.event} {self.engine}/{HYPERVISOR}"

    def run(self, passes: int, variant: int):
        return run_vm(self.guest.with_params(passes, variant), self.engine)

    def warm_up(self) -> None:
        for variant in (self.variant, EMPTY_VARIANT):
            self.run(self.passes // 10, variant)

    def measure(self, rep: int) -> None:
        order = (self.variant, EMPTY_VARIANT) if rep % 2 else (EMPTY_VARIANT, self.variant)
        runs = {v: self.run(self.passes, v) for v in order}
        event, empty = runs[self.variant], runs[EMPTY_VARIANT]
        self.us_per_event.append((event.seconds - empty.seconds) / self.passes * 1e6)
        self.exits_per_event.append((event.exits - empty.exits) / self.passes)


def rows(ctx: Context) -> list[Row]:
    guests = {name: Guest.load(name) for name in ("callouts32", "callouts16")}
    return [Row(event, engine, guests[guest], variant, PASSES[ctx.quick])
            for event, (_, by_engine) in EVENTS.items()
            for engine, (guest, variant) in by_engine.items() if engine in ctx.engines]


def run(ctx: Context) -> Section:
    measured = rows(ctx)
    interleave(measured, ctx.reps, Row.warm_up, Row.measure, ctx.progress)
    section = Section(NAME, TITLE)
    header = (f"    {'engine/hypervisor':<20} {'µs/event':>8} {'p10':>8} {'p90':>8} "
              f"{'exits/ev':>8} {'x trap':>8}  goal")
    for event, (what, _) in EVENTS.items():
        group = {row.engine: row for row in measured if row.event == event}
        mains = {engine: main_record(row) for engine, row in group.items()}
        section.lines += [f"  {event}: {what}; {PASSES[ctx.quick]} passes per run", header]
        for row in group.values():
            line, found = report(row, mains)
            section.lines.append(line)
            section.records += found
    return section


def main_record(row: Row) -> dict:
    if row.error:
        return record(NAME, row.engine, HYPERVISOR, f"{row.event}_us_per_event", None, "us",
                      reason=f"the run failed: {row.error}")
    return with_spread(NAME, row.engine, HYPERVISOR, f"{row.event}_us_per_event",
                       row.us_per_event, "us", passes=row.passes)


def report(row: Row, mains: dict) -> tuple[str, list[dict]]:
    main = mains[row.engine]
    name = f"{row.engine}/{HYPERVISOR}"
    if main["value"] is None:
        return f"    {name:<20} not measured: {main['reason']}", [main]
    exits = statistics.median(row.exits_per_event)
    records = [main, record(NAME, row.engine, HYPERVISOR, f"{row.event}_exits_per_event", exits,
                            "exits")]
    x_trap, judged = None, ""
    if row.engine == "bt":
        trap = mains.get("trap")
        if trap is None:
            found = missing(NAME, row.engine, HYPERVISOR, f"{row.event}_x_trap", "ratio",
                            "trap has no exit for it")
        else:
            found = ratio_of(NAME, row.engine, HYPERVISOR, f"{row.event}_x_trap", main, trap,
                             paired=True)
            judged = verdict(found, GOAL, unit="x trap")
        x_trap = found["value"]
        records.append(found)
    line = (f"    {name:<20} {main['value']:8.3f} {main['p10']:8.3f} {main['p90']:8.3f} "
            f"{fmt(exits, '.2f')} {fmt(x_trap, '.2f')}  {judged}").rstrip()
    return line, records
