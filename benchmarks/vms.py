"""Benchmark: VM snapshots (issue 14), save and restore time and file size, full and diff, for a
32 MiB and a 256 MiB guest.

The guest is `interrupts` (trap engine) paused after exit 200. Two RAM states are measured: the
guest's own (a few pages: what these guests touch) and "half written", where the host has filled
half of RAM with non-zero pages first (a guest that used its memory). A diff snapshot follows
the full one after 1 MiB (256 pages) more has been written. Save is capture + write to a file;
restore is read + parse + load into a freshly built VM (its construction not included). The
baseline, measured in the same run, is reading all of guest RAM once (``bytes(memory.mmap)``):
every time is also given as a ratio to it.

The debugger's jump back: `nano-in` (trap) is run to exit JUMP_FROM under the debugger, then
reverse-exit and goto-exit JUMP_FROM/2 are timed, once replaying from boot (automatic snapshots
off: the debugger before snapshots) and once from the nearest automatic snapshot; the ratio is
from-boot over from-snapshot.

Then live migration while a guest dirties memory at steady rates, and servicing the micro
hypervisor's parent partition while children run (vms_moves.py); last the proportional-share
scheduler's fairness and VM switch cost (scheduling.py).
"""
from __future__ import annotations

import os
import tempfile
import time

from benchmarks.loops import Context
from benchmarks.records import Section, ratio_of, record, with_spread
from benchmarks.scheduling import measure as measure_scheduler
from benchmarks.vms_moves import run_moves
from hypervisors.images import resolve
from hypervisors.monolithic import MonolithicHypervisor
from vmm.debug import debuggee
from vmm.snapshot import format as snapfile
from vmm.snapshot import machine, ram

NAME = "vms"
TITLE = ("Snapshots (interrupts, trap, after exit 200), debugger jumps, live migration of a "
         "guest dirtying memory, parent-partition servicing")
SIZES = {"32MiB": 32 << 20, "256MiB": 256 << 20}
DIFF_BYTES = 1 << 20
JUMP_FROM = {True: 10_000, False: 60_000}   # --quick, full
NEVER = 1 << 62
ENGINE = "trap"


def _paused(ram_size: int, half_written: bool) -> MonolithicHypervisor:
    hypervisor = MonolithicHypervisor(engine=ENGINE, ram_size=ram_size)
    hypervisor.boot(resolve("interrupts", ram_size))
    machine.run_to(hypervisor.vcpu, exit_number=200)
    if half_written:
        memory = hypervisor.vm.memory
        for page in range(memory.size // 2 // ram.PAGE, memory.size // ram.PAGE):
            memory.view[page * ram.PAGE:page * ram.PAGE + 8] = page.to_bytes(8, "little")
    return hypervisor


def _timed(action) -> tuple[float, object]:
    started = time.perf_counter()
    result = action()
    return time.perf_counter() - started, result


def _one(ram_size: int, half_written: bool, folder: str) -> dict[str, float]:
    """One repetition: every figure of one RAM size and state."""
    full_path, diff_path = os.path.join(folder, "full"), os.path.join(folder, "full.1")
    hypervisor = _paused(ram_size, half_written)
    try:
        baseline, _ = _timed(lambda: bytes(hypervisor.vm.memory.mmap))
        save, base = _timed(lambda: _save(hypervisor, full_path))
        hashes = ram.PageHashes(hypervisor.vm.memory)
        hypervisor.vm.memory.write(0x200000, os.urandom(DIFF_BYTES))
        diff_save, _ = _timed(lambda: _save(hypervisor, diff_path, base, hashes))
    finally:
        hypervisor.close()
    restore, _ = _restore([full_path], ram_size)
    diff_restore, _ = _restore([full_path, diff_path], ram_size)
    return {"read_ram_s": baseline, "save_full_s": save, "restore_full_s": restore,
            "save_diff_s": diff_save, "restore_diff_s": diff_restore,
            "full_bytes": os.path.getsize(full_path), "diff_bytes": os.path.getsize(diff_path)}


def _save(hypervisor, path, base=None, hashes=None):
    snapshot = machine.capture(hypervisor, base, hashes)
    snapfile.write(path, snapshot)
    return snapshot


def _restore(paths: list[str], ram_size: int) -> tuple[float, None]:
    hypervisor = MonolithicHypervisor(engine=ENGINE, ram_size=ram_size)
    try:
        return _timed(lambda: machine.restore(hypervisor, [snapfile.read(p) for p in paths]))
    finally:
        hypervisor.close()


def run(ctx: Context) -> Section:
    section = Section(NAME, TITLE)
    with tempfile.TemporaryDirectory(prefix="trapvisor-vms-") as folder:
        for label, size in SIZES.items():
            for state in ("guest", "half-written"):
                ctx.progress(f"{label} {state}")
                samples = [_one(size, state == "half-written", folder) for _ in range(ctx.reps)]
                _report(section, f"{label}/{state}", samples)
    ctx.progress("debugger jumps")
    _report_jumps(section, JUMP_FROM[ctx.quick], [_jumps(JUMP_FROM[ctx.quick])
                                                  for _ in range(ctx.reps)])
    run_moves(ctx, section)
    ctx.progress("scheduler")
    measure_scheduler(ctx, section)
    return section


def _jumps(target: int) -> dict[str, float]:
    """reverse-exit and goto-exit target/2 after goto-exit target, from boot and from snapshots."""
    image = resolve("nano-in", 32 << 20)
    times = {}
    for how, every in (("from_boot", NEVER), ("from_snapshot", debuggee.CHECKPOINT_EVERY)):
        saved, debuggee.CHECKPOINT_EVERY = debuggee.CHECKPOINT_EVERY, every
        try:
            d = debuggee.Debuggee(lambda observers: MonolithicHypervisor(
                engine=ENGINE, observers=observers), image)
            d.goto_exit(target)
            times[f"reverse_exit_{how}_s"], _ = _timed(d.reverse_exit)
            times[f"goto_half_{how}_s"], _ = _timed(lambda: d.goto_exit(target // 2))
            d.close()
        finally:
            debuggee.CHECKPOINT_EVERY = saved
    return times


def _report_jumps(section: Section, target: int, samples: list[dict]) -> None:
    where = f"debugger/nano-in-{target}"
    for jump in ("reverse_exit", "goto_half"):
        figures = {how: with_spread(NAME, ENGINE, "monolithic", f"{where}/{jump}_{how}_s",
                                    [s[f"{jump}_{how}_s"] for s in samples], "s")
                   for how in ("from_boot", "from_snapshot")}
        found = ratio_of(NAME, ENGINE, "monolithic", f"{where}/{jump}_boot_over_snapshot",
                         figures["from_boot"], figures["from_snapshot"], paired=True)
        faster = found["value"]
        section.records += [*figures.values(), found]
        section.lines.append(f"    {where + ' ' + jump:<36} from boot "
                             f"{figures['from_boot']['value'] or 0:7.3f} s, from a snapshot "
                             f"{figures['from_snapshot']['value'] or 0:7.3f} s "
                             f"({faster or 0:5.1f}x faster)")


def _report(section: Section, where: str, samples: list[dict]) -> None:
    times = {key: [s[key] for s in samples] for key in samples[0] if key.endswith("_s")}
    baseline = with_spread(NAME, ENGINE, "monolithic", f"{where}/read_ram_s",
                           times.pop("read_ram_s"), "s")
    section.records.append(baseline)
    line = [f"    {where:<22} read RAM {baseline['value'] or 0:7.3f} s"]
    for key, values in times.items():
        figure = with_spread(NAME, ENGINE, "monolithic", f"{where}/{key}", values, "s")
        found = ratio_of(NAME, ENGINE, "monolithic", f"{where}/{key[:-2]}_over_read_ram",
                         figure, baseline, paired=True)
        over = found["value"]
        section.records += [figure, found]
        line.append(f"{key[:-2]} {figure['value'] or 0:7.3f} s ({over or 0:5.1f}x)")
    for key in ("full_bytes", "diff_bytes"):
        size = samples[-1][key]
        section.records.append(record(NAME, ENGINE, "monolithic", f"{where}/{key}", size, "bytes"))
        line.append(f"{key[:-6]} {size / 1e6:8.2f} MB")
    section.lines += [line[0], "        " + ", ".join(line[1:])]
