"""Benchmark 6, scale: 1, 2, 4, 8 and 16 guests at once, aggregate throughput and memory per VM.

This runs N independent monolithic VMs in one process (the micro hypervisor's several children,
MicroHypervisor.run_all, are not measured here yet): all N are built and booted first (RSS measured with all of them alive), then
run one after another on one thread (Unicorn's C code holds no Python lock, but the exit path is
Python, so threads would mostly serialize on the GIL). Guest: exits32 with OUT 0x80, a mix of
guest code and I/O exits. Memory per VM = (RSS with N VMs alive - RSS before) / N.
"""
from __future__ import annotations

import gc
import os
import time

from benchmarks.harness import RAM, BenchmarkError, Guest
from benchmarks.loops import Context
from benchmarks.records import Section, record
from hypervisors.monolithic import MonolithicHypervisor

NAME = "scale"
TITLE = ("6. Scale: N monolithic VMs in one process, built together and run one after another "
         "(micro's several children: not measured yet)")
COUNTS = (1, 2, 4, 8, 16)
PASSES = {True: 1_000, False: 50_000}
OUT_VARIANT = 1
PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * PAGE


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
    section = Section(NAME, f"{TITLE}; exits32 OUT loop, {passes} passes per VM")
    section.lines.append(f"    {'engine':<8} {'VMs':>4} {'seconds':>9} {'passes/s':>11} "
                         f"{'x 1 VM':>7} {'MiB/VM':>7}")
    for engine in ctx.engines:
        single = None
        for count in COUNTS:
            ctx.progress(f"{engine}: {count} VMs")
            seconds, grown = run_many(guest, engine, count, passes)
            throughput = count * passes / seconds
            single = single or throughput
            per_vm = grown / count / (1 << 20)
            section.records += [
                record(NAME, engine, "monolithic", f"vms{count}_passes_per_second", throughput,
                       "passes/s", vms=count, mode="sequential, one process"),
                record(NAME, engine, "monolithic", f"vms{count}_rss_mib_per_vm", per_vm, "MiB",
                       vms=count)]
            section.lines.append(f"    {engine:<8} {count:4d} {seconds:9.3f} {throughput:11.0f} "
                                 f"{throughput / single:7.2f} {per_vm:7.2f}")
    return section
