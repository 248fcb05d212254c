"""Part of benchmark 1 (exits): the unobserved and the observed trap path of two events in both
guest modes, against their bare-Unicorn floors.

Events: OUT 0x80 to the platform's null device, and CLI at guest ring 0 (under trap and bt an
IOPL-0 #GP that the VMM decodes, emulates on the shadow IF and resumes). Modes: real mode
(benchmarks/guests/exits16.asm; trap and bt run it in virtual-8086 mode) and 32-bit protected
mode (exits32.asm; trap and bt run guest ring 0 on ring 1). Per engine of the monolithic
hypervisor, unobserved (no observer: the one exit path with the record's observer-only fields
left unread) and observed (an ExitStats observer attached, as with --stats, --trace or a
debugger: each exit also reads its SDM qualification's instruction bytes, is stamped and goes
through the observers); VMM-side is
ExitStats' mean time from building that record to re-entering the guest. The floors, measured in
the same run on emu.cpu.Cpu with no VMM in the same mode: for OUT the OUT hook at CPL 0, once
with and once without an instruction count (a counting vCPU runs uc_emu_start(count=N)); for
CLI #GP at CPL 3 (virtual-8086 mode or flat protected mode) -> hook -> take_exception, EIP += 1.

µs per event = (t(N passes with the instruction) - t(N passes of the empty loop)) / N, N patched
into the guest's parameter block; one pair per repetition, the pair's order alternating and the
repetitions rotating through every row. A run counts only if the null device saw exactly N
writes (none for CLI). Goals for unobserved exits of every engine but native: OUT <= 1 µs per exit,
CLI <= 3 µs per trap.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Callable

from benchmarks.harness import (COUNTED, EMPTY_VARIANT, NO_LIMIT, BenchmarkError, Guest, Run,
                                run_bare, run_vm)
from benchmarks.loops import Context, interleave
from benchmarks.records import (BARE, NONE, cells, cost, derived, fmt, missing, ratio_of, record,
                                verdict)
from vmm.observers import ExitStats

NAME = "exits"
HYPERVISOR = "monolithic"
COUNTED_BARE = f"{BARE}-counted"
# event -> (variant of exits16/exits32.asm, goal in µs when unobserved, what one event is)
EVENTS = {"out": (1, 1.0, "OUT 0x80 -> the null device"),
          "cli": (2, 3.0, "CLI at guest ring 0")}
X_NATIVE = {"out"}   # a native CLI does not trap: its few ns are no baseline for a trap
# mode -> (guest, where its loop runs)
MODES = {"real": ("exits16", "real mode (trap, bt: virtual-8086)"),
         "pm": ("exits32", "32-bit protected mode at ring 0 (trap, bt: ring 1)")}
# (event, mode) -> (harness.enter_bare mode of the floor, where the floor runs)
FLOORS = {("out", "real"): ("real", "real mode"),
          ("out", "pm"): ("pm0", "flat protected mode at CPL 0"),
          ("cli", "real"): ("v86", "virtual-8086 mode at CPL 3"),
          ("cli", "pm"): ("pm3", "flat protected mode at CPL 3")}
PASSES = {True: 5_000, False: 50_000}
MIN_EXITS = 0.5   # below this many exits per event, ExitStats' times are not the event's


@dataclass
class Row:
    """One event in one mode under one engine and path, or on the bare CPU, and its samples."""
    event: str
    mode: str
    engine: str
    hypervisor: str
    observed: bool
    run: Callable[[int, int], Run]            # (passes, variant) -> one timed run
    passes: int
    event_s: list[float] = field(default_factory=list)     # N passes with the event, per rep
    empty_s: list[float] = field(default_factory=list)     # N passes of the empty loop
    exits_per_event: list[float] = field(default_factory=list)
    handled_ns: list[int] = field(default_factory=list)
    error: str | None = None

    @property
    def label(self) -> str:
        """The progress line's name of the row."""
        return f"{self.event}_{self.mode} {self.name}"

    @property
    def name(self) -> str:
        """The table's name of the row."""
        if self.hypervisor == NONE:
            return f"{self.engine}{' (floor)' if self.engine == BARE else ''}"
        return f"{self.engine}/{self.hypervisor}{' +ExitStats' if self.observed else ''}"

    @property
    def metric(self) -> str:
        return f"{self.event}_{self.mode}{'_observed' if self.observed else ''}"

    def warm_up(self) -> None:
        """One short, unrecorded run of each variant (imports, first translations, decodes)."""
        for variant in (EVENTS[self.event][0], EMPTY_VARIANT):
            self.run(self.passes // 10, variant)

    def measure(self, rep: int) -> None:
        variant = EVENTS[self.event][0]
        order = (variant, EMPTY_VARIANT) if rep % 2 else (EMPTY_VARIANT, variant)
        runs = {v: self.run(self.passes, v) for v in order}
        event, empty = runs[variant], runs[EMPTY_VARIANT]
        self.event_s.append(event.seconds)
        self.empty_s.append(empty.seconds)
        self.exits_per_event.append((event.exits - empty.exits) / self.passes)
        self.handled_ns += event.handled_ns


def vm_runner(guest: Guest, engine: str, observed: bool) -> Callable[[int, int], Run]:
    def run(passes: int, variant: int) -> Run:
        stats = ExitStats()
        writes = passes if variant == EVENTS["out"][0] else 0

        def check(hypervisor) -> None:
            if hypervisor.board.post.writes != writes:
                raise BenchmarkError(f"{guest.image.name} under {engine}: "
                                     f"{hypervisor.board.post.writes} writes reached the null "
                                     f"device, expected {writes}")
        done = run_vm(guest.with_params(passes, variant), engine,
                      observers=[stats] if observed else [], check=check)
        done.handled_ns = [ns for samples in stats.samples.values() for ns in samples]
        return done
    return run


def bare_runner(guest: Guest, mode: str, count: int) -> Callable[[int, int], Run]:
    return lambda passes, variant: run_bare(guest, guest.with_params(passes, variant), mode,
                                            count)


def rows(ctx: Context) -> list[Row]:
    passes = PASSES[ctx.quick]
    result = []
    for mode, (name, _) in MODES.items():
        guest = Guest.load(name)
        for event in EVENTS:
            bare_mode = FLOORS[event, mode][0]
            floors = [(BARE, NO_LIMIT)] + ([(COUNTED_BARE, COUNTED)] if event == "out" else [])
            result += [Row(event, mode, engine, NONE, False, bare_runner(guest, bare_mode, count),
                           passes) for engine, count in floors]
            result += [Row(event, mode, engine, HYPERVISOR, observed,
                           vm_runner(guest, engine, observed), passes)
                       for engine in ctx.engines
                       for observed in ((False,) if engine == "native" else (False, True))]
    return result


def run(ctx: Context) -> tuple[list[str], list[dict]]:
    """The table lines and records of the trap paths."""
    measured = rows(ctx)
    interleave(measured, ctx.reps, Row.warm_up, Row.measure, ctx.progress)
    lines = [f"  trap paths ({PASSES[ctx.quick]} passes per run): µs per event (median, min, "
             "max), exits per event, x floor (the first bare row), x native (OUT only); VMM-side = "
             "ExitStats' mean µs from VmExit record to re-entry"]
    header = (f"    {'engine/hypervisor':<26} {'µs/event':>8} {'min':>8} {'max':>8} "
              f"{'exits/ev':>8} {'x floor':>8} {'x native':>8} {'VMM-side':>8}  goal")
    records = []
    for event, (_, goal, what) in EVENTS.items():
        for mode, (guest, where) in MODES.items():
            lines += [f"  {event}_{mode}: {what}, {where}, {guest}; floor in "
                      f"{FLOORS[event, mode][1]}", header]
            group = [row for row in measured if row.event == event and row.mode == mode]
            mains = {(row.engine, row.observed): main_record(row) for row in group}
            for row in group:
                line, found = report(row, mains, goal)
                lines.append(line)
                records += found
    return lines, records


def main_record(row: Row) -> dict:
    metric = f"{row.metric}_us_per_event"
    if row.error:
        return missing(NAME, row.engine, row.hypervisor, metric, "us",
                       f"the run failed: {row.error}")
    return cost(NAME, row.engine, row.hypervisor, metric, row.event_s, row.empty_s, row.passes,
                "us", passes=row.passes)


def report(row: Row, mains: dict, goal: float) -> tuple[str, list[dict]]:
    """One row's table line and records; mains holds every row's main record of its group."""
    main = mains[row.engine, row.observed]
    us = main["value"]
    if us is None:
        return f"    {row.name:<26} not measured: {main['reason']}", [main]
    engine_row = row.hypervisor != NONE
    floor = (ratio_of(NAME, row.engine, row.hypervisor, f"{row.metric}_x_floor", main,
                      mains[BARE, False], paired=True) if row.engine != BARE else None)
    native = mains.get(("native", False))
    compared = engine_row and row.engine != "native" and row.event in X_NATIVE
    x_native = (ratio_of(NAME, row.engine, row.hypervisor, f"{row.metric}_x_native", main,
                         native, paired=True) if compared else None)
    exits = statistics.median(row.exits_per_event) if engine_row else None
    vmm_side = (sum(row.handled_ns) / len(row.handled_ns) / 1e3
                if row.observed and exits >= MIN_EXITS else None)
    records = [main] + [r for r in (floor, x_native) if r is not None]
    if exits is not None:
        records.append(record(NAME, row.engine, row.hypervisor, f"{row.metric}_exits_per_event",
                              exits, "exits"))
    if row.observed:
        records.append(derived(NAME, row.engine, row.hypervisor, f"{row.metric}_vmm_side_us",
                               vmm_side, "us", f"fewer than {MIN_EXITS} exits per event: "
                               "ExitStats timed the boot's exits, not this event's",
                               **vmm_spread(row.handled_ns)))
    goal_text = ""
    if engine_row and row.engine != "native" and not row.observed:
        goal_text = verdict(main, goal, unit="µs")
    line = (f"    {row.name:<26} {cells(main)} {fmt(exits, '.2f')} "
            f"{fmt(floor and floor['value'], '.2f')} {fmt(x_native and x_native['value'], '.2f')} "
            f"{fmt(vmm_side)}  {goal_text}").rstrip()
    return line, records


def vmm_spread(handled_ns: list[int]) -> dict:
    """Min and max of ExitStats' per-exit samples in µs (its value is their mean)."""
    if not handled_ns:
        return {}
    return {"min": min(handled_ns) / 1e3, "max": max(handled_ns) / 1e3, "n": len(handled_ns)}
