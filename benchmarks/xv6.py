"""Benchmark 7, xv6 to its first prompt: MIT's xv6 (x86) booted from its own disks, timed until
its shell prints the first `$ `, under QEMU TCG (`qemu-system-i386 -nographic`, the peer) and
under trapvisor's engines, in the same run.

The disks come from TRAPVISOR_XV6 or ../shared/xv6 beside the project (tests/e2e/test_xv6.py
uses the same); without them, or without qemu-system-i386, the figures are null records that say
why. QEMU is timed from process start to the prompt on its serial console (its start-up and
SeaBIOS are inside: that is what a user waits for); trapvisor is timed from `run()` to the
prompt, with the VM built beforehand (what `trapvisor run` adds at start-up is the `cpu`
section's and the CLI's business). Each disk is a fresh copy per run: xv6 writes to fs.img.
"""
from __future__ import annotations

import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from benchmarks.loops import Context
from benchmarks.records import NONE, Section, missing, ratio_of, value_text, with_spread
from hypervisors.images import resolve
from hypervisors.monolithic import MonolithicHypervisor
from vmm.run_state import RunState

NAME = "xv6"
TITLE = "7. xv6 (x86) from BIOS hand-over to its first shell prompt, beside QEMU TCG"
XV6 = Path(os.environ.get("TRAPVISOR_XV6", Path(__file__).resolve().parents[2] / "shared" / "xv6"))
DISKS = ("xv6.img", "fs.img")
PROMPT = b"$ "
RAM = 256 << 20
QEMU = "qemu-system-i386"
# engines measured: --quick keeps native (the floor) and bt (its in-run callouts are the subject)
ENGINES = {True: ("native", "bt"), False: ("native", "vtx", "bt")}
TIMEOUT_S = {True: 120.0, False: 300.0}
METRIC = "first_prompt_seconds"


def run(ctx: Context) -> Section:
    section = Section(NAME, TITLE)
    reason = absent()
    if reason:
        section.lines.append(f"  not measured: {reason}")
        section.records += [missing(NAME, name, hyp, METRIC, "s", reason)
                            for name, hyp in [("qemu-tcg", NONE)] + [
                                (engine, "monolithic") for engine in ENGINES[ctx.quick]]]
        return section
    reps = min(ctx.reps, 3)
    section.lines.append(f"  seconds to the first '$ ' (median of {reps}; QEMU from process "
                         "start, trapvisor from run())")
    with tempfile.TemporaryDirectory() as tmp:
        ctx.progress("qemu")
        qemu = [time_qemu(fresh_disks(Path(tmp))) for _ in range(reps)]
        found = [with_spread(NAME, "qemu-tcg", NONE, METRIC, qemu, "s")]
        for engine in ENGINES[ctx.quick]:
            ctx.progress(engine)
            found.append(trapvisor_record(engine, Path(tmp), reps, TIMEOUT_S[ctx.quick]))
    section.records += found
    qemu_record, ours = found[0], found[1:]
    section.lines.append(f"    {'qemu-tcg':<9} {value_text(qemu_record, '8.2f')}")
    for r in ours:
        times = ratio_of(NAME, r["engine"], "monolithic", "first_prompt_over_qemu", r,
                         qemu_record)
        section.records.append(times)
        section.lines.append(f"    {r['engine']:<9} {value_text(r, '8.2f')}"
                             + (f"   {times['value']:5.1f}x QEMU" if times["value"] else ""))
    return section


def absent() -> str:
    """Why this machine cannot run the benchmark, or ''."""
    if not all((XV6 / name).is_file() for name in DISKS):
        return f"no xv6 disk images in {XV6} (set TRAPVISOR_XV6)"
    if shutil.which(QEMU) is None:
        return f"{QEMU} is not installed (the benchmark never installs it)"
    return ""


def fresh_disks(directory: Path) -> list[str]:
    copies = []
    for name in DISKS:
        shutil.copy(XV6 / name, directory / name)
        copies.append(str(directory / name))
    return copies


def time_qemu(disks: list[str]) -> float:
    """Wall seconds from starting QEMU to the prompt on its serial console."""
    drives = [arg for index, disk in enumerate(disks) for arg in
              ("-drive", f"file={disk},index={index},media=disk,format=raw")]
    started = time.perf_counter()
    qemu = subprocess.Popen([QEMU, "-nographic", "-serial", "stdio", "-monitor", "none",
                             "-smp", "1", "-m", "256", "-no-reboot", *drives],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)
    try:
        return wait_for_prompt(qemu, started)
    finally:
        qemu.kill()
        qemu.wait()


def wait_for_prompt(qemu: subprocess.Popen, started: float, timeout: float = 60) -> float:
    seen = bytearray()
    while PROMPT not in seen:
        if time.perf_counter() - started > timeout:
            raise RuntimeError(f"{QEMU} printed no prompt in {timeout:.0f} s: {bytes(seen[-200:])!r}")
        ready, _, _ = select.select([qemu.stdout], [], [], 1.0)
        if ready:
            chunk = os.read(qemu.stdout.fileno(), 4096)
            if not chunk:
                raise RuntimeError(f"{QEMU} ended before its prompt: {bytes(seen[-200:])!r}")
            seen += chunk
    return time.perf_counter() - started


def trapvisor_record(engine: str, directory: Path, reps: int, timeout: float) -> dict:
    samples = []
    for _ in range(reps):
        seconds, why = time_trapvisor(engine, fresh_disks(directory), timeout)
        if seconds is None:
            return missing(NAME, engine, "monolithic", METRIC, "s", why)
        samples.append(seconds)
    return with_spread(NAME, engine, "monolithic", METRIC, samples, "s")


def time_trapvisor(engine: str, disks: list[str], timeout: float) -> tuple[float | None, str]:
    """(seconds from run() to the prompt, '') or (None, why the prompt never came)."""
    seen = bytearray()
    prompt_at: list[float] = []
    hypervisor = None

    def sink(data: bytes) -> None:
        seen.extend(data)
        if not prompt_at and PROMPT in seen:
            prompt_at.append(time.perf_counter())
            hypervisor.vcpu.finish(RunState.INPUT_DONE, "the benchmark stops at the first prompt")

    hypervisor = MonolithicHypervisor(engine=engine, ram_size=RAM, sink=sink, timeout=timeout,
                                      drives=disks)
    try:
        image = resolve(None, RAM, drives=disks)
        started = time.perf_counter()
        result = hypervisor.run(image)
    finally:
        hypervisor.close()
    if not prompt_at:
        return None, (f"no prompt under {engine}: the run ended {result.state.value} after "
                      f"{time.perf_counter() - started:.0f} s ({result.message})")
    return prompt_at[0] - started, ""
