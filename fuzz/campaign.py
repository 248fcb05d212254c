"""A campaign: cases from consecutive seeds, each run under every engine in the worker pool,
judged (fuzz/verdict.py), counted per engine and outcome, timed; new divergences are kept with
their seed for minimisation."""
from __future__ import annotations

import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

from fuzz.outcome import Outcome, Run
from fuzz.pool import Bounds, Pool
from fuzz.program import RandomBytesCase, StructuredCase, record_log
from fuzz.verdict import Divergence, judge

ENGINES = ("native", "trap", "bt", "vtx")
GENERATORS = {"structured": StructuredCase, "bytes": RandomBytesCase}
# A run that hit --timeout where another engine finished is run again with this many times the
# time: wall time is the one bound a loaded machine moves, and a slower engine cut short by it
# has not shown how the case ends (an event storm takes seconds under any engine).
RETRY_TIMEOUT_FACTOR = 4


@dataclass
class CaseResult:
    case: object
    runs: dict[str, Run]
    divergences: list[Divergence]


@dataclass
class Tally:
    cases: int = 0
    outcomes: dict[str, Counter] = field(default_factory=lambda: {e: Counter() for e in ENGINES})
    seconds: Counter = field(default_factory=Counter)        # per engine, in the workers
    divergences: Counter = field(default_factory=Counter)    # expected / known / new
    known: Counter = field(default_factory=Counter)          # per known entry
    failures: list[CaseResult] = field(default_factory=list)
    wall_seconds: float = 0.0
    retried: Counter = field(default_factory=Counter)        # per engine: timeouts run again

    def add(self, result: CaseResult) -> None:
        self.cases += 1
        for engine, run in result.runs.items():
            self.outcomes[engine][run.verdict if not run.outcome.unfinished
                                  else run.outcome.value] += 1
            self.seconds[engine] += run.seconds + run.retried_after
            self.retried[engine] += run.retried_after > 0
        for divergence in result.divergences:
            kind = ("expected" if divergence.expected else "known" if divergence.known
                    else "new")
            self.divergences[kind] += 1
            if divergence.known:
                self.known[divergence.known.name] += 1
        if any(d.failure for d in result.divergences):
            self.failures.append(result)

    def report(self) -> str:
        lines = [f"{self.cases} cases in {self.wall_seconds:.1f} s "
                 f"({self.cases / max(self.wall_seconds, 1e-9):.1f} cases/s overall)"]
        for engine in ENGINES:
            rate = self.cases / max(self.seconds[engine], 1e-9)
            counts = ", ".join(f"{k} {v}" for k, v in sorted(self.outcomes[engine].items()))
            retried = (f"  ({self.retried[engine]} run again after a timeout)"
                       if self.retried[engine] else "")
            lines.append(f"  {engine:<6} {rate:7.1f} cases/s (worker time)  {counts}{retried}")
        lines.append("divergences: " + (", ".join(f"{k} {v}" for k, v in
                                                 sorted(self.divergences.items())) or "none"))
        lines += [f"  known {name}: {count}" for name, count in sorted(self.known.items())]
        return "\n".join(lines)


def make_case(kind: str, seed: int, length: int):
    return GENERATORS[kind].generate(seed, length)


def run_case(pool: Pool, case, bounds: Bounds, engines=ENGINES) -> CaseResult:
    """Every engine's run of ``case``; a structured case logs its records to RAM."""
    logged = isinstance(case, StructuredCase)
    image, log = (case.logged_image(), record_log()) if logged else (case.image(), None)
    runs = {engine: pool.run(engine, image, bounds, log) for engine in engines}
    if any(not run.outcome.unfinished for run in runs.values()):
        longer = replace(bounds, timeout=bounds.timeout * RETRY_TIMEOUT_FACTOR)
        for engine, run in runs.items():
            if run.outcome is Outcome.TIMEOUT:
                runs[engine] = replace(pool.run(engine, image, longer, log),
                                       retried_after=run.seconds)
    return CaseResult(case, runs, judge(case, runs))


def campaign(kind: str, seeds, length: int, bounds: Bounds, jobs: int = 1,
             progress=None) -> Tally:
    tally = Tally()
    started = time.perf_counter()
    with Pool() as pool, ThreadPoolExecutor(max_workers=jobs) as executor:
        results = executor.map(lambda seed: run_case(pool, make_case(kind, seed, length),
                                                     bounds), seeds)
        for result in results:
            tally.add(result)
            if progress:
                progress(tally, result)
    tally.wall_seconds = time.perf_counter() - started
    return tally
