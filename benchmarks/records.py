"""The results every benchmark hands back: JSON records {benchmark, engine, hypervisor, metric,
value, unit} (value null plus a reason when a figure cannot be measured here), the spread of a
set of samples, and the printed section that goes with them.

A figure is never impossible: a cost that comes out zero or negative (the difference of two timed
runs lost in this machine's noise), a rate over a time difference too short to time, or a ratio
of such figures becomes a null record whose reason says so.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field

BARE = "bare-unicorn"    # the engine name of figures measured on emu.cpu.Cpu with no VMM
NONE = "-"               # the hypervisor name of figures that involve no hypervisor
REQUIRED = ("benchmark", "engine", "hypervisor", "metric", "value", "unit")
MIN_DIFFERENCE_S = 1e-3  # a difference of two runs' times shorter than this is not a timing


@dataclass
class Section:
    """One benchmark's printed table and its records."""
    name: str
    title: str
    lines: list[str] = field(default_factory=list)
    records: list[dict] = field(default_factory=list)


def record(benchmark: str, engine: str, hypervisor: str, metric: str, value: float | None,
           unit: str, **extra) -> dict:
    return {"benchmark": benchmark, "engine": engine, "hypervisor": hypervisor,
            "metric": metric, "value": value, "unit": unit, **extra}


def missing(benchmark: str, engine: str, hypervisor: str, metric: str, unit: str,
            reason: str, **extra) -> dict:
    """A figure that cannot be measured on this combination, and why."""
    return record(benchmark, engine, hypervisor, metric, None, unit, reason=reason, **extra)


def derived(benchmark: str, engine: str, hypervisor: str, metric: str, value: float | None,
            unit: str, reason: str, **extra) -> dict:
    """A figure computed from others: its value, or null with the reason it has none."""
    if value is None:
        return missing(benchmark, engine, hypervisor, metric, unit, reason, **extra)
    return record(benchmark, engine, hypervisor, metric, value, unit, **extra)


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def spread(samples: list[float]) -> dict:
    """Median, p10 and p90 of the samples, for a record's extra fields."""
    return {"median": statistics.median(samples), "p10": percentile(samples, 10),
            "p90": percentile(samples, 90), "samples": list(samples)}


def with_spread(benchmark: str, engine: str, hypervisor: str, metric: str,
                samples: list[float], unit: str, **extra) -> dict:
    """A record whose value is the median of the samples, with p10/p90 and the samples; null
    when that median is not positive (every figure given this way is a cost or a time)."""
    stats = spread(samples)
    median = stats.pop("median")
    if not (math.isfinite(median) and median > 0):
        return missing(benchmark, engine, hypervisor, metric, unit,
                       f"the median, {median:.3g} {unit}, is not positive: the difference of "
                       "two timed runs is below this machine's timing noise",
                       samples=stats["samples"], **extra)
    return record(benchmark, engine, hypervisor, metric, median, unit, **stats, **extra)


def rate(benchmark: str, engine: str, hypervisor: str, metric: str, amount: float,
         seconds: list[float], unit: str, **extra) -> dict:
    """amount per second over the median of `seconds` (per repetition, the difference of a big
    and a small run's times); null when that median is too short to time."""
    median = statistics.median(seconds)
    if not median >= MIN_DIFFERENCE_S:
        return missing(benchmark, engine, hypervisor, metric, unit,
                       f"the big run took {median * 1e3:.3g} ms more than the small one (median):"
                       f" under {MIN_DIFFERENCE_S * 1e3:g} ms is no rate", seconds=seconds,
                       **extra)
    return record(benchmark, engine, hypervisor, metric, amount / median, unit,
                  seconds=seconds, **extra)


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b when both are positive figures, else None."""
    return a / b if a is not None and b is not None and a > 0 and b > 0 else None


def value_text(r: dict, spec: str = ".4g") -> str:
    """A record's value and unit as a table shows it, or why it has none."""
    if r["value"] is None:
        return f"not measured: {r['reason']}"
    return f"{r['value']:{spec}} {r['unit']}"


def fmt(value: float | None, spec: str = ".3f", width: int = 8) -> str:
    return f"{value:{width}{spec}}" if value is not None else f"{'-':>{width}}"
