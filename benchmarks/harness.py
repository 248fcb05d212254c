"""What every trapvisor benchmark shares: building guests with N set at build time or patched
into their parameter block, one timed run of a guest under a hypervisor and engine (with its
exit count) or on the bare Unicorn CPU without any VMM, and discovery of the engines and
hypervisors that exist in this checkout. Only the vCPU's run / `Cpu.run()` is timed; building
the machine, a micro child partition and the boot hand-over are not. Stock Unicorn with no
trapvisor code at all is `emu.baseline.run_flat_image` (benchmarks may not import unicorn).

Writing a benchmark module (the API the suite runs):

- The module has NAME, TITLE and `run(ctx: loops.Context) -> records.Section`; register it with
  one line, its module name, in suite.MODULES. `ctx.reps` is the number of repetitions,
  `ctx.quick` asks for short runs, `ctx.engines` / `ctx.hypervisors` say what exists,
  `ctx.progress(text)` writes the progress line. Rotate repetitions through your rows
  (`loops.interleave`) so slow phases of the machine hit every row alike.
- Keep raw timings, one per repetition, and let records.py turn them into figures; every figure
  carries min, median (its value), max, p10, p90 and n, and every figure that cannot be taken is
  `value: null` with a `reason`:
    `with_spread(bench, engine, hypervisor, metric, samples, unit)` - a positive figure measured
        directly (seconds of a run, a throughput);
    `cost(..., measured_s, baseline_s, per, unit, scale=1e6)` - (measured - baseline) / per per
        repetition, µs by default: null when the baseline is as long or longer, the difference
        is below the timer's resolution or within the baseline runs' own noise;
    `rate(..., amount, measured_s, baseline_s, unit)` - amount / (measured - baseline), the
        same guards;
    `ratio_of(..., a, b)` - a record over another, paired per repetition when both have as
        many samples, else with bounds; null when either side is not measured;
    `missing(..., unit, reason)` - cannot be measured here (a tool absent, a wrong hypervisor);
    `verdict(figure, goal, at_least=False)` - judges a figure and returns the table's text;
        below records.MIN_REPS repetitions the verdict is "not enough repetitions".
- The suite screens every record before printing the JSON or the plot (`records.screen`): a
  figure that is still impossible (negative, not finite, median outside its range) is withheld
  and listed under the tables. --quick runs are labelled INDICATIVE in the header, the JSON
  (`indicative` at the top and on each record) and the plot.
"""
from __future__ import annotations

import contextlib
import dataclasses
import gc
import re
import struct
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import guests
from emu.asm import assemble
from emu.cpu import (CS, DS, ECX, ES, ESP, FS, GS, SS, DESC_B, DESC_DPL_SHIFT, DESC_G, DESC_P,
                     DESC_S, DESC_TYPE_SHIFT, FLAG_IF, FLAG_VM, IOPL_MASK, Cpu)
from emu.memory import GuestMemory
from hypervisors.images import GuestImage
from hypervisors.monolithic import MonolithicHypervisor
from vmm.engines import ENGINES

BENCH_GUESTS = Path(__file__).resolve().parent / "guests"
RAM = 32 << 20
MAGIC = b"BNCH"                      # parameter block of benchmarks/guests/exits*.asm, compute32
EMPTY_VARIANT = 0                    # the parameter block's variant 0: the loop alone
NO_LIMIT, COUNTED = 0, 1 << 40       # uc_emu_start counts: none, or one that never runs out
CR0_PE_ET = 0x11
ITERATIONS_LINE = re.compile(r"^(ITERATIONS\s+equ\s+)\S+", re.MULTILINE)


class BenchmarkError(RuntimeError):
    """A benchmark run did not do what it measures (wrong status, early stop, ...)."""


# ----- guests -----------------------------------------------------------------------------------
def guest_source(name: str) -> Path:
    """A shipped guest (guests/NAME.asm) or a benchmark guest (benchmarks/guests/NAME.asm)."""
    own = BENCH_GUESTS / f"{name}.asm"
    return own if own.is_file() else guests.path(name)


@lru_cache(maxsize=None)
def build(name: str, iterations: int) -> GuestImage:
    """Assemble guest NAME with `ITERATIONS equ N` replaced by `iterations` (the nano guests'
    build-time N: guests/nano.inc)."""
    path = guest_source(name)
    source, count = ITERATIONS_LINE.subn(rf"\g<1>{iterations}", path.read_text(), count=1)
    if not count:
        raise BenchmarkError(f"{path} defines no `ITERATIONS equ N`")
    image = assemble(source, filename=str(path), include_dirs=[guests.GUEST_DIR])
    return GuestImage(name, image.code, image.origin, image.listing)


@dataclass(frozen=True)
class Guest:
    """A guest with a parameter block after "BNCH": iterations, variant, entry32 (dwords)."""
    image: GuestImage
    params: int

    @classmethod
    def load(cls, name: str) -> "Guest":
        path = BENCH_GUESTS / f"{name}.asm"
        image = assemble(path.read_text(), filename=str(path), include_dirs=[guests.GUEST_DIR])
        offset = image.code.find(MAGIC)
        if offset < 0:
            raise BenchmarkError(f"{name}.asm has no {MAGIC.decode()} parameter block")
        return cls(GuestImage(name, image.code, image.origin, image.listing),
                   offset + len(MAGIC))

    def with_params(self, iterations: int, variant: int = 0) -> GuestImage:
        code = bytearray(self.image.code)
        struct.pack_into("<II", code, self.params, iterations, variant)
        return dataclasses.replace(self.image, code=bytes(code))

    @property
    def entry32(self) -> int:
        return struct.unpack_from("<I", self.image.code, self.params + 8)[0]


# ----- engines and hypervisors that exist -------------------------------------------------------
def engines() -> list[str]:
    """Every engine the monolithic hypervisor offers, native first (bt and vtx when they land)."""
    return sorted(ENGINES, key=lambda name: (name != "native", name))


def hypervisors() -> dict[str, type | str]:
    """name -> hypervisor class, or -> the reason it cannot be measured here."""
    found: dict[str, type | str] = {"monolithic": MonolithicHypervisor}
    try:
        from hypervisors.micro.hypervisor import MicroHypervisor
    except ImportError as exc:
        found["micro"] = f"the micro hypervisor is not importable ({exc})"
    else:
        found["micro"] = MicroHypervisor
    return found


# ----- one timed run ----------------------------------------------------------------------------
class Stopwatch:
    """Wall time and this process's CPU time of the block it wraps."""

    def __enter__(self) -> "Stopwatch":
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu


@dataclass
class Run:
    seconds: float
    cpu_seconds: float
    exits: int = 0
    instructions: int = 0
    handled_ns: list[int] = field(default_factory=list)   # ExitStats samples, when observed


def run_vm(image: GuestImage, engine: str, hypervisor: type = MonolithicHypervisor,
           observers=(), check=None) -> Run:
    """Boot ``image`` and time its vCPU's run alone: building the hypervisor, a micro child
    partition (its VM, its devices in the parent) and the boot hand-over are set-up, not timed.
    The guest must end with status 0, and ``check(hypervisor)``, when given, raises
    BenchmarkError if the run did not do what it measures."""
    vm = hypervisor(engine=engine, ram_size=RAM, observers=list(observers))
    try:
        create_partition = getattr(vm, "create_partition", None)
        guest = create_partition() if create_partition else vm
        with getattr(guest, "pinned", contextlib.nullcontext)():   # micro: as its vCPU thread runs
            guest.boot(image)
            gc.collect()
            with Stopwatch() as watch:
                result = guest.vcpu.run()
        if not result.ok or result.status != 0:
            raise BenchmarkError(f"{image.name} under {engine}:\n{result.report()}")
        if check is not None:
            check(vm)
    finally:
        vm.close()
    return Run(watch.wall, watch.cpu, result.exits, result.instructions)


class NullHandler:
    """The bare machine's CpuHandler: every hook does as little as a hook can. A fault steps
    EIP over a one-byte instruction (CLI); a software interrupt needs nothing (EIP is past it)."""

    def __init__(self, cpu: Cpu):
        self.cpu = cpu

    def on_interrupt(self, intno: int) -> None:
        _, software = self.cpu.take_exception()
        if not software:
            self.cpu.eip += 1

    def on_in(self, port: int, size: int) -> int:
        return 0

    def on_out(self, port: int, size: int, value: int) -> None:
        pass

    def on_cpuid(self) -> bool:
        return False

    def on_invalid_opcode(self) -> bool:
        return False

    def on_unmapped(self, access: int, address: int, size: int, value: int) -> bool:
        return False


class StopOnOut(NullHandler):
    """At CPL 3 HLT faults instead of stopping the CPU, so the guest's exit OUT stops it."""

    def on_out(self, port: int, size: int, value: int) -> None:
        self.cpu.stop()


def flat(kind: int, dpl: int) -> int:
    """Descriptor-cache flags of a flat 4 GiB 32-bit segment (kind 0xB code, 0x3 data)."""
    return DESC_P | DESC_S | DESC_B | DESC_G | (kind << DESC_TYPE_SHIFT) | (dpl << DESC_DPL_SHIFT)


def enter_bare(cpu: Cpu, mode: str, guest: Guest) -> None:
    """Put the bare CPU where the guest's loop runs: 'real' (CPL 0), 'v86' (CPL 3, IOPL 0),
    'pm0' / 'pm3' (flat 32-bit protected mode at the guest's entry32)."""
    if mode == "real":
        cpu.eip = guest.image.origin
        return
    cpu.write_cr(0, CR0_PE_ET)
    if mode == "v86":
        cpu.set_system_flags(FLAG_VM | FLAG_IF, IOPL_MASK)
        for seg in (ES, CS, SS, DS, FS, GS):
            cpu.load_real_segment(seg, 0, dpl=3)
        cpu.eip = guest.image.origin
        return
    dpl = 3 if mode == "pm3" else 0
    cpu.set_system_flags(FLAG_IF, IOPL_MASK | FLAG_VM)
    for seg in (ES, SS, DS, FS, GS):
        cpu.load_segment(seg, 0x10 | dpl, 0, 0xFFFFFFFF, flat(0x3, dpl))
    cpu.load_segment(CS, 0x08 | dpl, 0, 0xFFFFFFFF, flat(0xB, dpl))
    cpu.gpr[ESP] = 0x90000
    cpu.eip = guest.entry32


def run_bare(guest: Guest, image: GuestImage, mode: str, count: int = NO_LIMIT,
             memory_hook: bool = False) -> Run:
    """Run the loop on emu.cpu.Cpu with no VMM at all: one uc_emu_start, timed alone.
    ``memory_hook`` arms a UC_HOOK_MEM_WRITE on one untouched page at the top of RAM."""
    memory = GuestMemory(RAM)
    cpu = Cpu(memory)
    try:
        memory.write(image.origin, image.code)
        cpu.attach((StopOnOut if mode in ("v86", "pm3") else NullHandler)(cpu))
        if memory_hook:
            cpu.watch_memory(RAM - 0x1000, RAM, lambda *args: None, reads=False, writes=True)
        enter_bare(cpu, mode, guest)
        gc.collect()
        with Stopwatch() as watch:
            err = cpu.run(count)
        left = cpu.gpr[ECX] & 0xFFFFFFFF
        if err or cpu.hook_error is not None or left:
            raise BenchmarkError(f"{image.name} on the bare CPU ({mode}): Unicorn error {err}, "
                                 f"hook error {cpu.hook_error!r}, ECX = {left} passes left")
        return Run(watch.wall, watch.cpu, 0, cpu.executed() if count else 0)
    finally:
        cpu.close()
        memory.close()
