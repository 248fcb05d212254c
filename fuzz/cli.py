"""`trapvisor fuzz`: a differential campaign (every case under native, trap, bt and vtx, in worker
processes), a replay of stored reproducers, or the parent-partition intercept fuzzer.

    trapvisor fuzz --cases 10000 --seed S --jobs 2        # a long campaign
    trapvisor fuzz --replay tests/fuzz/*.asm              # what each reproducer shows now
    trapvisor fuzz --parent --cases 2000 --seed S         # hostile intercepts, ATA programs

Exit status 0 when nothing new diverged, 1 when something did (each new divergence is minimised
and printed with its seed; --save DIR writes the reproducers), 2 for bad input.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from fuzz.campaign import ENGINES, GENERATORS, campaign, run_case
from fuzz.minimise import minimise
from fuzz.pool import Bounds, Pool
from fuzz.program import RUNTIME, StructuredCase

DEFAULT_LENGTH = {"structured": 30, "bytes": 64}
# Raw bytes mostly never end and often storm exceptions in real mode: fewer instructions.
DEFAULT_INSTRUCTIONS = {"structured": 2_000_000, "bytes": 20_000}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trapvisor fuzz", description=__doc__.split("\n")[0])
    parser.add_argument("--cases", type=int, default=200, help="cases to run (default 200)")
    parser.add_argument("--seed", type=int, default=0, help="the first case's seed; case N "
                        "has seed S+N, so any case is rebuilt from its seed alone")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument("--kind", choices=sorted(GENERATORS), default="structured",
                        help="structured programs (default) or random bytes")
    parser.add_argument("--length", type=int, help="ops per structured case (default 30) or "
                        "bytes per random case (default 64)")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds per run")
    parser.add_argument("--max-exits", type=int, default=200_000, help="exits per run")
    parser.add_argument("--max-instructions", type=int,
                        help="guest instructions per run (default 2000000, bytes 20000)")
    parser.add_argument("--no-minimise", action="store_true",
                        help="report new divergences without shrinking them")
    parser.add_argument("--save", metavar="DIR", help="write each minimised reproducer there")
    parser.add_argument("--replay", metavar="FILE", nargs="+",
                        help="run stored reproducers (.asm) instead of a campaign")
    parser.add_argument("--parent", action="store_true", help="fuzz the micro hypervisor's "
                        "parent partition with hostile intercept messages and ATA programs "
                        "against its IDE channel instead")
    parser.add_argument("--verbose", "-v", action="store_true",
                        help="print every divergence, expected and known ones too")
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.parent:
        from fuzz import parent
        return parent.main(args.cases, args.seed)
    bounds = Bounds(args.timeout, args.max_exits,
                    args.max_instructions or DEFAULT_INSTRUCTIONS[args.kind])
    if args.replay:
        return replay(args.replay, bounds)
    length = args.length or DEFAULT_LENGTH[args.kind]
    seeds = range(args.seed, args.seed + args.cases)
    tally = campaign(args.kind, seeds, length, bounds, args.jobs,
                     progress=lambda t, r: report_case(r, args.verbose))
    print(tally.report())
    if not tally.failures:
        return 0
    print(f"{len(tally.failures)} case(s) with new divergences:")
    with Pool() as pool:
        for result in tally.failures:
            report_failure(pool, result, bounds, args)
    return 1


def report_case(result, verbose: bool) -> None:
    for divergence in result.divergences:
        if verbose or divergence.failure:
            print(f"seed {result.case.seed}: {divergence.describe()}", flush=True)


def report_failure(pool: Pool, result, bounds: Bounds, args) -> None:
    for divergence in (d for d in result.divergences if d.failure):
        case = result.case if args.no_minimise else minimise(pool, result.case, divergence,
                                                              bounds)
        print(f"\nseed {case.seed} ({case.kind}), {divergence.engine}: {divergence.what}")
        if args.save:
            path = save(case, divergence, Path(args.save))
            print(f"  reproducer: {path}")
        else:
            print(case.source(os.path.relpath(RUNTIME)).split("db 0\n", 1)[-1])


def save(case, divergence, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{divergence.engine}-{case.kind}-{case.seed}.asm"
    header = "".join(f"; {line}\n" for line in divergence.describe().splitlines())
    path.write_text(f"; fuzz reproducer, seed {case.seed}\n{header}"
                    + case.source(os.path.relpath(RUNTIME, directory)))
    return path


def replay(paths: list[str], bounds: Bounds) -> int:
    """Run each reproducer under every engine and print the verdicts and divergences."""
    new = 0
    with Pool() as pool:
        for path in paths:
            case = load(Path(path))
            result = run_case(pool, case, bounds)
            verdicts = ", ".join(f"{e} {result.runs[e].verdict}" for e in ENGINES)
            print(f"{path}: {verdicts}")
            for divergence in result.divergences:
                print(f"  {divergence.describe()}")
            new += sum(d.failure for d in result.divergences)
    return 1 if new else 0


def load(path: Path):
    """A stored reproducer: a structured case if it includes the runtime, else raw bytes."""
    text = path.read_text()
    kind = StructuredCase if "runtime.asm" in text else GENERATORS["bytes"]
    return kind.from_source(text)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
