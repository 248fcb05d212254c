"""Benchmark 1, exit cost by kind: what one VM exit of each kind costs under each engine and
hypervisor, beside the same loop under the native engine and the bare-Unicorn floor of that
kind of event measured in the same run.

Kinds: CPUID, VMCALL, IN from an in-hypervisor device (port 0x80 null device), IN from a
parent-partition device (micro hypervisor only), MOV to CR0, RDMSR, WRMSR, HLT woken by a timer,
page fault, exception reflection (#DE), INT 0x80 system call from ring 3. Per combination: median
µs per guest iteration with p10/p90 over the repetitions, exits per iteration (vCPU exit count),
µs per exit, x native (same loop, native engine) and x floor (Unicorn's cheapest round trip).
Then the trap paths (traps.py): OUT and CLI in real and protected mode, unobserved and with an
ExitStats observer attached, beside their floors in the same mode.
"""
from __future__ import annotations

from benchmarks import traps
from benchmarks.loops import Context
from benchmarks.records import Section, cells, derived, fmt, missing, ratio_of, record

NAME = "exits"
TITLE = "1. Exit cost by kind: µs per guest iteration (median, min, max), exits per iteration"
# kind -> (guest, floor kind, what one iteration does)
KINDS = {
    "cpuid": ("exit-cpuid", "cpuid", "CPUID leaf 0"),
    "vmcall": ("exit-vmcall", "fault", "VMCALL (native: #UD to the guest)"),
    "io_hypervisor": ("nano-in", "io", "IN port 0x80, device in the hypervisor"),
    "io_parent": ("nano-in", "io", "IN port 0x80, device in the parent partition"),
    "cr_write": ("nano-crwrite", "fault", "MOV CR0, EAX"),
    "msr_read": ("exit-rdmsr", "fault", "RDMSR 0x174"),
    "msr_write": ("exit-wrmsr", "fault", "WRMSR 0x174"),
    "hlt_wakeup": ("exit-hlt", "fault", "STI; HLT woken by a PIT tick, EOI, IRET"),
    "page_fault": ("nano-pgfault", "fault", "#PF, handler maps the page, unmap + INVLPG"),
    "exception": ("nano-divzero", "fault", "DIV by 0 -> #DE to the guest's handler"),
    "syscall": ("nano-syscall", "softint", "INT 0x80 from ring 3 and IRET"),
}
WRONG_HYPERVISOR = {
    ("io_parent", "monolithic"): "monolithic: every device model is in the hypervisor process",
    ("io_hypervisor", "micro"): "micro: legacy port I/O is forwarded to the parent partition "
                                "(see io_parent)",
    ("vmcall", "micro"): "micro logs every rejected hypercall to stderr: the figure would "
                         "measure the logging",
}
MIN_EXITS = 0.5   # below this many exits per iteration, µs per exit means nothing
QUICK_SKIP = "not run with --quick (micro runs are slow; --quick measures only io_parent there)"


def run(ctx: Context) -> Section:
    ctx.ensure_floors()
    every = sorted({guest for guest, _, _ in KINDS.values()})
    ctx.ensure_loops(every, "monolithic")
    ctx.ensure_loops(["nano-in"] if ctx.quick else [g for g in every if g != "exit-vmcall"],
                     "micro")
    section = Section(NAME, TITLE)
    floors = floor_records(ctx)
    section.records += floors
    section.lines += floor_lines(floors)
    header = (f"    {'engine/hypervisor':<20} {'µs/iter':>8} {'min':>8} {'max':>8} "
              f"{'exits/it':>8} {'µs/exit':>8} {'x native':>8} {'x floor':>8}")
    for kind, (guest, floor, what) in KINDS.items():
        section.lines += [f"  {kind}: {what} ({guest})", header]
        for name in ctx.hypervisors:
            for engine in ctx.engines:
                line, records = combination(ctx, kind, engine, name)
                section.lines.append(line)
                section.records += records
    lines, records = traps.run(ctx)
    section.lines += lines
    section.records += records
    return section


def floor_records(ctx: Context) -> list[dict]:
    return [floor.figure(NAME) for floor in ctx.floors.values()]


def floor_lines(records: list[dict]) -> list[str]:
    lines = ["  bare-Unicorn floors (emu.cpu.Cpu, no VMM; µs per event, median min max):"]
    for r in records:
        kind = r["metric"].removeprefix("floor_").removesuffix("_us_per_event")
        figures = cells(r) if r["value"] is not None else f"not measured: {r['reason']}"
        lines.append(f"    {kind:<8} {figures}  {r['description']}")
    return lines


def combination(ctx: Context, kind: str, engine: str, hypervisor: str) -> tuple[str, list]:
    """The table line and records of one kind under one engine and hypervisor."""
    label = f"{engine}/{hypervisor}"
    reason = unavailable(ctx, kind, engine, hypervisor)
    if reason:
        return (f"    {label:<20} not measured: {reason}",
                [missing(NAME, engine, hypervisor, f"{kind}_us_per_iteration", "us", reason)])
    loop = ctx.loop(KINDS[kind][0], engine, hypervisor)
    main = loop.figure(NAME, f"{kind}_us_per_iteration")
    us, exits = main["value"], loop.exits_per_iteration
    records = [main, record(NAME, engine, hypervisor, f"{kind}_exits_per_iteration", exits,
                            "exits")]
    if us is None:
        return (f"    {label:<20} not measured: {main['reason']} ({exits:.2f} exits/iteration)",
                records)
    per_exit = us / exits if exits and exits >= MIN_EXITS else None
    native = ctx.loop(loop.guest, "native", hypervisor) if "native" in ctx.engines else None
    x_native = (ratio_of(NAME, engine, hypervisor, f"{kind}_x_native", main,
                         native.figure(NAME, f"{kind}_us_per_iteration"), paired=True)
                if native is not None and engine != "native" else None)
    x_floor = ratio_of(NAME, engine, hypervisor, f"{kind}_x_floor", main,
                       ctx.floors[KINDS[kind][1]].figure(NAME))
    records += [
        derived(NAME, engine, hypervisor, f"{kind}_us_per_exit", per_exit, "us",
                f"fewer than {MIN_EXITS} exits per iteration",
                **({"min": main["min"] / exits, "max": main["max"] / exits, "n": main["n"]}
                   if per_exit is not None else {})),
        *([x_native] if x_native else []), x_floor,
    ]
    line = (f"    {label:<20} {cells(main)} "
            f"{fmt(exits, '.2f')} {fmt(per_exit)} {fmt(x_native and x_native['value'], '.2f')} "
            f"{fmt(x_floor['value'], '.2f')}")
    return line, records


def unavailable(ctx: Context, kind: str, engine: str, hypervisor: str) -> str | None:
    """Why this combination has no figure, or None."""
    cls = ctx.hypervisors[hypervisor]
    if isinstance(cls, str):
        return cls
    if (kind, hypervisor) in WRONG_HYPERVISOR:
        return WRONG_HYPERVISOR[kind, hypervisor]
    loop = ctx.loop(KINDS[kind][0], engine, hypervisor)
    if loop is None:
        return QUICK_SKIP
    if loop.error:
        return f"the run failed: {loop.error}"
    return None
