"""The `vms` section's moving VMs (issue 14): live migration while a guest writes memory at a
steady rate, and servicing the micro hypervisor's parent partition while children run.

Migration: benchmarks/guests/dirty.asm (trap) dirties one page every 2 * ITERATIONS + 7
instructions; for each rate and hypervisor the source (this process) runs it to instruction
TRIGGER and migrates it (hypervisors/migration.py's pre-copy) to a `trapvisor run --incoming`
process, which must then run the guest to its successful end. Figures per repetition: the
downtime (the source's last instruction to the target's ack), the total time, pre-copy rounds,
bytes sent. Baseline, in the same repetition: capturing a full snapshot of the paused source
(the stop-and-copy a migration without pre-copy would at least cost, before sending a byte);
the downtime is given as a ratio to it. The target process's start is not timed.

Servicing (hypervisors/micro/servicing.py): SERVICE_GUESTS under micro, the parent serviced
once a child has taken SERVICE_AT exits; per child the pause, save and restore times and the
snapshot's bytes, the parent's restart and the total, and the total as a ratio to the restart
(the bare process replacement, measured in the same repetition). Every child must end as it
does undisturbed (status 0). Both processes share the machine's CPUs with the children: wall
time.
"""
from __future__ import annotations

import re
import subprocess
import sys
import time

from benchmarks.harness import BenchmarkError, build
from benchmarks.records import Section, ratio_of, record, with_spread
from hypervisors.images import resolve
from hypervisors.micro.hypervisor import MicroHypervisor
from hypervisors.micro.servicing import run_serviced
from hypervisors.micro.snapshots import PartitionMachine
from hypervisors.migration import send
from hypervisors.monolithic import MonolithicHypervisor
from vmm.snapshot import machine

NAME = "vms"
ENGINE = "trap"
RAM = 32 << 20
TRIGGER = 1_000_000                      # instructions before the migration starts
SPINS = {True: (1000, 10_000), False: (500, 2000, 10_000)}   # --quick, full: dirtying rates
SERVICE_GUESTS = ("interrupts", "usermode", "hog")
SERVICE_AT = 100
_WHERE = re.compile(rb"tcp:127\.0\.0\.1:\d+")


def _source(hypervisor: str, spins: int):
    made = (MonolithicHypervisor(engine=ENGINE, ram_size=RAM) if hypervisor == "monolithic"
            else PartitionMachine(MicroHypervisor(engine=ENGINE, ram_size=RAM)))
    made.boot(build("dirty", spins))
    return made


def _target() -> tuple[subprocess.Popen, str]:
    target = subprocess.Popen([sys.executable, "-m", "hypervisors.cli", "run", "--incoming",
                               "tcp:127.0.0.1:0"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)
    found = _WHERE.search(target.stderr.readline())
    if found is None:
        target.kill()
        raise BenchmarkError("the --incoming target did not say where it listens")
    return target, found.group(0).decode()


def _migration(hypervisor: str, spins: int) -> dict[str, float]:
    """One repetition: migrate the dirtying guest once, after measuring the baseline."""
    source = _source(hypervisor, spins)
    target, where = _target()
    try:
        if not machine.run_to(source.vcpu, instructions=TRIGGER):
            raise BenchmarkError("dirty ended before the migration point")
        started = time.perf_counter()
        machine.capture(source)
        baseline = time.perf_counter() - started
        config = {"hypervisor": hypervisor, "engine": ENGINE, "exit_on": "", "ram": RAM,
                  "drives": [], "input": "", "based_on": None}
        figures = send(where, source, config, by_exits=False)
    finally:
        source.close()
    out, err = target.communicate(timeout=300)
    if figures is None or target.returncode != 0 or b"all checks passed" not in out:
        raise BenchmarkError(f"the migrated guest did not complete: {err.decode()[-300:]}")
    return {"full_capture_s": baseline, "downtime_s": figures.downtime_s,
            "total_s": figures.total_s, "rounds": figures.rounds, "bytes": figures.bytes}


def _servicing() -> dict[str, float]:
    """One repetition of parent servicing: its figures, flattened."""
    hypervisor = MicroHypervisor(engine=ENGINE, ram_size=RAM)
    try:
        guests = [(hypervisor.create_partition(name), resolve(name, RAM))
                  for name in SERVICE_GUESTS]
        results, figures, _ = run_serviced(hypervisor, guests, SERVICE_AT,
                                           say=lambda *a, **k: None)
    finally:
        hypervisor.close()
    if figures is None or not all(result.ok for result in results):
        raise BenchmarkError("a serviced child did not complete: "
                             + "; ".join(r.report() for r in results if not r.ok))
    found = {"restart_s": figures.restart_s, "total_s": figures.total_s}
    for child in figures.children:
        found.update({f"{child.name}/paused_s": child.paused_s,
                      f"{child.name}/save_s": child.save_s,
                      f"{child.name}/restore_s": child.restore_s,
                      f"{child.name}/bytes": child.bytes})
    return found


def run_moves(ctx, section: Section) -> None:
    """Add the migration and servicing rows to the vms section."""
    hypervisors = [name for name in ("monolithic", "micro") if name in ctx.available_hypervisors()]
    for spins in SPINS[ctx.quick]:
        for hypervisor in hypervisors:
            ctx.progress(f"migration {hypervisor} spin {spins}")
            samples = [_migration(hypervisor, spins) for _ in range(ctx.reps)]
            _report_migration(section, hypervisor, spins, samples)
    if "micro" in hypervisors:
        ctx.progress("parent servicing")
        _report_servicing(section, [_servicing() for _ in range(ctx.reps)])


def _pages_per_ms(spins: int) -> float:
    return 1e6 / (2 * spins + 7)


def _report_migration(section: Section, hypervisor: str, spins: int, samples: list) -> None:
    where = f"migration/dirty-{_pages_per_ms(spins):.0f}-pages-per-ms"
    figure = {key: with_spread(NAME, ENGINE, hypervisor, f"{where}/{key}",
                               [s[key] for s in samples], unit)
              for key, unit in (("full_capture_s", "s"), ("downtime_s", "s"), ("total_s", "s"),
                                ("rounds", "rounds"))}
    over = ratio_of(NAME, ENGINE, hypervisor, f"{where}/downtime_over_full_capture",
                    figure["downtime_s"], figure["full_capture_s"], paired=True)
    sent = record(NAME, ENGINE, hypervisor, f"{where}/bytes", samples[-1]["bytes"], "bytes")
    section.records += [*figure.values(), over, sent]
    value = lambda key: figure[key]["value"] or 0
    section.lines.append(
        f"    {where:<38} {hypervisor:<10} downtime {value('downtime_s') * 1e3:7.1f} ms "
        f"({over['value'] or 0:5.2f}x a full capture), total {value('total_s'):6.3f} s, "
        f"{value('rounds'):.0f} rounds, {samples[-1]['bytes'] / 1e6:6.2f} MB")


def _report_servicing(section: Section, samples: list) -> None:
    times = {key: with_spread(NAME, ENGINE, "micro", f"servicing/{key}",
                              [s[key] for s in samples], "s")
             for key in samples[0] if key.endswith("_s")}
    over = ratio_of(NAME, ENGINE, "micro", "servicing/total_over_restart",
                    times["total_s"], times["restart_s"], paired=True)
    sizes = [record(NAME, ENGINE, "micro", f"servicing/{key}", samples[-1][key], "bytes")
             for key in samples[0] if key.endswith("/bytes")]
    section.records += [*times.values(), over, *sizes]
    ms = lambda key: (times[key]["value"] or 0) * 1e3
    section.lines.append(f"    servicing ({', '.join(SERVICE_GUESTS)}) restart "
                         f"{ms('restart_s'):7.1f} ms, total {ms('total_s'):7.1f} ms "
                         f"({over['value'] or 0:4.2f}x the restart)")
    for name in SERVICE_GUESTS:
        if f"{name}/paused_s" in times:
            section.lines.append(f"        {name:<12} paused {ms(f'{name}/paused_s'):7.1f} ms "
                                 f"(save {ms(f'{name}/save_s'):6.1f}, restore "
                                 f"{ms(f'{name}/restore_s'):6.1f}), "
                                 f"{samples[-1][f'{name}/bytes']} bytes")
