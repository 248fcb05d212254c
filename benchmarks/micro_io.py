"""The cost of the parent-partition round trip: one forwarded port-I/O exit under the micro
hypervisor against the same exit handled in-process by the monolithic one (KVM's inl_from_qemu
against inl_from_kernel, ~2.8x in 2012), plus the bare channel round trip with no CPU involved.

    python benchmarks/micro_io.py [--iterations N] [--reps R] [--json PATH]

Per-exit cost = (time of an N-pass `in al, 0x80` loop - time of the same loop without the IN) / N,
under the trap engine, median of R repetitions; ratios are taken against the monolithic figure
measured in the same run. Writes JSON to benchmarks/results/micro_io.json (gitignored).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from hypervisors.images import resolve  # noqa: E402
from hypervisors.micro.hypervisor import MicroHypervisor  # noqa: E402
from hypervisors.micro.wire import Op  # noqa: E402
from hypervisors.monolithic import MonolithicHypervisor  # noqa: E402

DEFAULT_JSON = HERE / "results" / "micro_io.json"
LOOP = """bits 16
org 0x7c00
    cli
    mov ecx, {iterations}
next:
    {body}
    dec ecx
    jnz next
    out 0xF4, al
"""
HYPERVISORS = {"monolithic": MonolithicHypervisor, "micro": MicroHypervisor}


def guest(directory: Path, iterations: int, with_in: bool):
    path = directory / f"loop-{int(with_in)}.asm"
    path.write_text(LOOP.format(iterations=iterations, body="in al, 0x80" if with_in else "nop"))
    return resolve(str(path), 32 << 20)


def timed_run(kind: str, image) -> float:
    hypervisor = HYPERVISORS[kind](engine="trap")
    try:
        started = time.perf_counter()
        result = hypervisor.run(image)
        elapsed = time.perf_counter() - started
    finally:
        hypervisor.close()
    if not result.ok:
        raise SystemExit(f"micro_io: the {kind} loop did not finish: {result.message}")
    return elapsed


def per_exit_us(kind: str, images, iterations: int) -> float:
    return (timed_run(kind, images[True]) - timed_run(kind, images[False])) / iterations * 1e6


def channel_round_trip_us(iterations: int) -> float:
    """IO_READ of port 0x80 straight through the channel: the wire and the parent, no CPU."""
    hypervisor = MicroHypervisor(engine="trap")
    try:
        channel = hypervisor.create_partition().channel
        started = time.perf_counter()
        for _ in range(iterations):
            channel.call(Op.IO_READ, 1, 0x80)
        return (time.perf_counter() - started) / iterations * 1e6
    finally:
        hypervisor.close()


def measure(iterations: int, reps: int) -> dict:
    with tempfile.TemporaryDirectory() as directory:
        images = {flag: guest(Path(directory), iterations, flag) for flag in (True, False)}
        samples = {kind: [] for kind in (*HYPERVISORS, "channel")}
        for _ in range(reps):
            for kind in HYPERVISORS:
                samples[kind].append(per_exit_us(kind, images, iterations))
            samples["channel"].append(channel_round_trip_us(iterations))
    medians = {kind: statistics.median(values) for kind, values in samples.items()}
    base = medians["monolithic"]
    return {"iterations": iterations, "reps": reps, "samples_us": samples, "median_us": medians,
            "ratio_vs_monolithic": {kind: value / base for kind, value in medians.items()},
            "target_ratio": 3.0, "kvm_2012_ratio": 20574 / 7237}


def bench_records(quick: bool) -> list[dict]:
    """`trapvisor bench` entry point: µs per I/O exit in each placement, and their ratio."""
    from benchmarks.records import record
    results = measure(500 if quick else 10_000, 1 if quick else 3)
    medians, ratios = results["median_us"], results["ratio_vs_monolithic"]
    records = [record("micro", "trap", kind, "io_exit_us", medians[kind], "us")
               for kind in HYPERVISORS]
    records.append(record("micro", "-", "micro", "channel_round_trip_us", medians["channel"],
                          "us"))
    records.append(record("micro", "trap", "micro", "forwarded_io_x_in_process",
                          ratios["micro"], "ratio", target=3.0))
    return records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iterations", type=int, default=20000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    args = parser.parse_args(argv)
    results = measure(args.iterations, args.reps)
    print(f"{'configuration':<40} {'us/exit':>9} {'x monolithic':>13}")
    labels = {"monolithic": "monolithic: IN handled in-process",
              "micro": "micro: IN forwarded to the parent",
              "channel": "micro channel round trip alone (no CPU)"}
    for kind, label in labels.items():
        print(f"{label:<40} {results['median_us'][kind]:>9.2f} "
              f"{results['ratio_vs_monolithic'][kind]:>12.1f}x")
    print(f"target <= {results['target_ratio']:.1f}x; KVM 2012 inl_from_qemu / inl_from_kernel = "
          f"{results['kvm_2012_ratio']:.2f}x")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
