"""Benchmark 6, scale: 1, 2, 4, 8 and 16 guests, aggregate throughput and memory per VM.

Two placements. Monolithic: N independent VMs in one process, all built and booted first (RSS
measured with all of them alive), then run one after another on one thread. Micro: N child
partitions of one micro hypervisor sharing the CPU (MicroHypervisor.run_all: one vCPU thread
each, run one at a time on the proportional-share scheduler's grants), their devices in one
parent process;
memory counts the hypervisor's and the parent's RSS growth. Guest: exits32 with OUT 0x80, a mix
of guest code and I/O exits (forwarded to the parent under micro). Memory per VM = growth / N.
"""
from __future__ import annotations

import gc
import os
import time

from benchmarks.harness import RAM, BenchmarkError, Guest
from benchmarks.loops import Context
from benchmarks.records import MIN_REPS, Section, fmt, ratio_of, with_spread
from hypervisors.monolithic import MonolithicHypervisor

NAME = "scale"
TITLE = ("6. Scale: N monolithic VMs in one process run one after another, and N micro child "
         "partitions run at once")
COUNTS = (1, 2, 4, 8, 16)
PASSES = {True: 1_000, False: 50_000}
MICRO_PASSES = {True: 200, False: 5_000}
OUT_VARIANT = 1
PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes(pid: int | str = "self") -> int:
    with open(f"/proc/{pid}/statm") as statm:
        return int(statm.read().split()[1]) * PAGE


def run_micro(guest: Guest, engine: str, count: int, passes: int) -> tuple[float, int]:
    """(seconds, RSS growth of hypervisor + parent) for `count` children running at once."""
    from hypervisors.micro.hypervisor import MicroHypervisor
    gc.collect()
    image = guest.with_params(passes, OUT_VARIANT)
    micro = MicroHypervisor(engine=engine, ram_size=RAM)
    try:
        parent = micro.parent.process.pid
        before = rss_bytes() + rss_bytes(parent)
        children = [(micro.create_partition(), image) for _ in range(count)]
        started = time.perf_counter()
        results = micro.run_all(children)
        seconds = time.perf_counter() - started
        grown = rss_bytes() + rss_bytes(parent) - before
    finally:
        micro.close()
    if not all(r.ok and r.status == 0 for r in results):
        raise BenchmarkError(f"a child partition of {count} did not finish cleanly")
    return seconds, grown


def run_many(guest: Guest, engine: str, count: int, passes: int) -> tuple[float, int]:
    """(seconds to run all, RSS growth with all alive) for `count` VMs."""
    gc.collect()
    before = rss_bytes()
    image = guest.with_params(passes, OUT_VARIANT)
    vms = [MonolithicHypervisor(engine=engine, ram_size=RAM) for _ in range(count)]
    try:
        for vm in vms:
            vm.boot(image)
        started = time.perf_counter()
        results = [vm.vcpu.run() for vm in vms]
        seconds = time.perf_counter() - started
        grown = rss_bytes() - before
    finally:
        for vm in vms:
            vm.close()
    if not all(r.ok and r.status == 0 for r in results):
        raise BenchmarkError(f"a VM of {count} did not finish cleanly")
    return seconds, grown


def run(ctx: Context) -> Section:
    guest = Guest.load("exits32")
    passes = PASSES[ctx.quick]
    section = Section(NAME, f"{TITLE}; exits32 OUT loop, {passes} passes per monolithic VM, "
                            f"{MICRO_PASSES[ctx.quick]} per micro child")
    section.lines.append(f"    {'engine':<8} {'hypervisor':<10} {'VMs':>4} {'passes/s':>11} "
                         f"{'min':>11} {'max':>11} {'x 1 VM':>7} {'MiB/VM':>7}")
    placements = [("monolithic", run_many, PASSES[ctx.quick], ctx.engines)]
    if "micro" in ctx.available_hypervisors():
        micro_engines = ["trap"] if ctx.quick else [e for e in ctx.engines if e != "native"]
        placements.append(("micro", run_micro, MICRO_PASSES[ctx.quick], micro_engines))
    for hypervisor, runner, count_passes, engines in placements:
        for engine in engines:
            scale_row(ctx, section, guest, engine, hypervisor, runner, count_passes)
    return section


def scale_row(ctx, section, guest, engine, hypervisor, runner, passes) -> None:
    """One engine and placement at every count: `reps` runs each (at most MIN_REPS: 16 VMs a
    run), throughput and RSS growth per VM with their range."""
    reps = min(ctx.reps, MIN_REPS)
    single = None
    mode = ("sequential, one process" if hypervisor == "monolithic"
            else "children on the scheduler's grants")
    for count in COUNTS:
        throughput, per_vm = [], []
        for rep in range(reps):
            ctx.progress(f"{engine}/{hypervisor}: {count} VMs, rep {rep + 1}/{reps}")
            seconds, grown = runner(guest, engine, count, passes)
            throughput.append(count * passes / seconds)
            per_vm.append(grown / count / (1 << 20))
        rate = with_spread(NAME, engine, hypervisor, f"vms{count}_passes_per_second", throughput,
                           "passes/s", vms=count, mode=mode)
        memory = with_spread(NAME, engine, hypervisor, f"vms{count}_rss_mib_per_vm", per_vm,
                             "MiB", vms=count)
        if memory["value"] is None:
            memory["reason"] = (f"the RSS did not grow in every run ({min(per_vm):+.2f} to "
                                f"{max(per_vm):+.2f} MiB per VM): freed memory was reused")
        single = single or rate
        x_single = ratio_of(NAME, engine, hypervisor, f"vms{count}_x_one_vm", rate, single)
        section.records += [rate, memory, x_single]
        section.lines.append(f"    {engine:<8} {hypervisor:<10} {count:4d} "
                             f"{fmt(rate['value'], '.0f', 11)} {fmt(rate.get('min'), '.0f', 11)} "
                             f"{fmt(rate.get('max'), '.0f', 11)} "
                             f"{fmt(x_single['value'], '.2f', 7)} "
                             f"{fmt(memory['value'], '.2f', 7)}")
