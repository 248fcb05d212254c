"""Per-iteration cost of a guest's measured loop, and the bare-Unicorn floors of each kind of
event, shared by the exit-kind and Adams & Agesen benchmarks.

A loop guest (guests/nano-*.asm, benchmarks/guests/exit-*.asm) runs twice per repetition, with N
and N/5 iterations set at build time; µs per iteration = (t(N) - t(N/5)) / (N - N/5), which
removes boot and report. Exits per iteration come from the vCPU's exit count the same way. N is
calibrated per guest and engine so the difference takes a fixed time (cheap native loops need
millions of passes to stand above the noise). Repetitions rotate through every configuration.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from benchmarks.harness import EMPTY_VARIANT, Guest, build, run_bare, run_vm
from benchmarks.records import BARE, NONE, cost, missing

LADDER = (100, 500, 2_500, 12_500, 62_500, 312_500, 1_562_500, 7_812_500)
FLOOR_PASSES = {True: 3_000, False: 40_000}
# floor kind -> (exits32.asm variant, bare mode, what the floor is)
FLOORS = {
    "io": (1, "pm0", "OUT hook returning at once"),
    "fault": (2, "pm3", "#GP at CPL 3 -> hook -> take_exception, EIP += 1"),
    "cpuid": (3, "pm0", "CPUID hook returning 'not handled'"),
    "softint": (4, "pm0", "INT 0x80 -> interrupt hook -> take_exception"),
}


@dataclass
class Loop:
    """One loop guest under one engine and hypervisor, and the timings of its repetitions."""
    guest: str
    engine: str
    hypervisor: str
    cls: type
    n: tuple[int, int] = (LADDER[0], LADDER[1])
    low_s: list[float] = field(default_factory=list)     # the N/5 runs, one per repetition
    high_s: list[float] = field(default_factory=list)    # the N runs
    exits_per_iteration: float | None = None
    error: str | None = None

    @property
    def key(self) -> tuple[str, str, str]:
        return self.guest, self.engine, self.hypervisor

    @property
    def label(self) -> str:
        return f"{self.guest} {self.engine}/{self.hypervisor}"

    @property
    def span(self) -> int:
        return self.n[1] - self.n[0]

    def measure(self) -> tuple[float, float, float]:
        """One repetition: (seconds of the N/5 run, of the N run, exits per iteration)."""
        low, high = (run_vm(build(self.guest, n), self.engine, self.cls) for n in self.n)
        return low.seconds, high.seconds, (high.exits - low.exits) / self.span

    def figure(self, benchmark: str, metric: str) -> dict:
        """µs per iteration over the repetitions (records.cost: null when it is no timing)."""
        if self.error:
            return missing(benchmark, self.engine, self.hypervisor, metric, "us",
                           f"the run failed: {self.error}")
        return cost(benchmark, self.engine, self.hypervisor, metric, self.high_s, self.low_s,
                    self.span, "us", iterations=list(self.n))


def calibrate(loop: Loop, target_seconds: float) -> None:
    """Warm up and climb the ladder until the difference of the two runs takes target_seconds
    (each step is measured, so a noisy first estimate never picks a huge N)."""
    for low, high in zip(LADDER, LADDER[1:]):
        loop.n = (low, high)
        low_s, high_s, _ = loop.measure()
        if high_s - low_s >= target_seconds:
            break


def interleave(items: list, reps: int, prepare, repetition, progress) -> None:
    """prepare(item) for each item (warm-up, calibration), then `reps` repetitions of
    repetition(item, rep) over the items in an order rotated by one each time, so slow phases of
    the machine hit every configuration alike. An item (with .label and .error) whose step fails
    keeps the error, reported as a record with a reason, and is dropped."""
    live = [item for item in items if not attempt(item, prepare)]
    for rep in range(reps):
        shift = rep % len(live) if live else 0
        for item in live[shift:] + live[:shift]:
            if item.error is None:
                progress(f"{item.label} rep {rep + 1}/{reps}")
                attempt(item, repetition, rep)


def measure_loops(loops: list[Loop], reps: int, target_seconds: float, progress) -> None:
    """Calibrate each loop, then run the repetitions rotating through the loops."""
    interleave(loops, reps, lambda loop: calibrate(loop, target_seconds), _record_rep, progress)


def _record_rep(loop: Loop, rep: int) -> None:
    low_s, high_s, exits = loop.measure()
    loop.low_s.append(low_s)
    loop.high_s.append(high_s)
    loop.exits_per_iteration = exits


def attempt(item, step, *args) -> bool:
    """Run step(item, *args); on failure store the error in item.error and say so."""
    try:
        step(item, *args)
    except Exception as exc:  # noqa: BLE001  (one broken combination must not end the suite)
        item.error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        return True
    return False


@dataclass
class Floor:
    """Unicorn's cheapest round trip for one kind of event, on a bare Cpu with no VMM."""
    kind: str
    passes: int
    event_s: list[float] = field(default_factory=list)   # the loop with the event, per rep
    empty_s: list[float] = field(default_factory=list)   # the empty loop, per rep

    @property
    def description(self) -> str:
        return FLOORS[self.kind][2]

    def measure(self, guest: Guest, passes: int) -> tuple[float, float]:
        """(seconds of the loop with the event, of the empty loop), `passes` passes each."""
        variant, mode, _ = FLOORS[self.kind]
        runs = [run_bare(guest, guest.with_params(passes, v), mode)
                for v in (variant, EMPTY_VARIANT)]
        return runs[0].seconds, runs[1].seconds

    def figure(self, benchmark: str) -> dict:
        """µs per event: the loop with the event minus the empty loop, per pass."""
        return cost(benchmark, BARE, NONE, f"floor_{self.kind}_us_per_event", self.event_s,
                    self.empty_s, self.passes, "us", description=self.description)


def measure_floors(reps: int, quick: bool, progress) -> dict[str, Floor]:
    guest = Guest.load("exits32")
    passes = FLOOR_PASSES[quick]
    floors = {kind: Floor(kind, passes) for kind in FLOORS}
    for floor in floors.values():
        floor.measure(guest, passes // 10)        # warm-up, not recorded
    for rep in range(reps):
        for floor in floors.values():
            progress(f"bare-Unicorn floor {floor.kind} rep {rep + 1}/{reps}")
            event_s, empty_s = floor.measure(guest, passes)
            floor.event_s.append(event_s)
            floor.empty_s.append(empty_s)
    return floors


@dataclass
class Context:
    """What one `trapvisor bench` run shares: sizes, the engines and hypervisors found, the
    progress line, and the loop and floor measurements (the exit-kind and nano benchmarks use
    the same runs)."""
    quick: bool
    reps: int
    engines: list[str]
    hypervisors: dict            # name -> class, or -> why it cannot be measured
    progress: object             # progress(message) writes to stderr
    loops: dict = field(default_factory=dict)
    floors: dict | None = None

    @property
    def target_seconds(self) -> float:
        return 0.01 if self.quick else 0.25

    def available_hypervisors(self) -> dict[str, type]:
        return {name: cls for name, cls in self.hypervisors.items() if not isinstance(cls, str)}

    def loop(self, guest: str, engine: str, hypervisor: str) -> Loop | None:
        return self.loops.get((guest, engine, hypervisor))

    def ensure_loops(self, guests: list[str], hypervisor: str = "monolithic") -> None:
        """Measure every guest under every engine of one hypervisor, unless measured already."""
        cls = self.available_hypervisors().get(hypervisor)
        new = [Loop(guest, engine, hypervisor, cls) for guest in guests
               for engine in self.engines if cls and (guest, engine, hypervisor) not in self.loops]
        measure_loops(new, self.reps, self.target_seconds, self.progress)
        self.loops.update({loop.key: loop for loop in new})

    def ensure_floors(self) -> dict[str, Floor]:
        if self.floors is None:
            self.floors = measure_floors(self.reps, self.quick, self.progress)
        return self.floors
