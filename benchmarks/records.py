"""The results every benchmark hands back: JSON records {benchmark, engine, hypervisor, metric,
value, unit} (value null plus a reason when a figure cannot be measured here), the spread of a
set of samples, and the printed section that goes with them.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field

BARE = "bare-unicorn"    # the engine name of figures measured on emu.cpu.Cpu with no VMM
NONE = "-"               # the hypervisor name of figures that involve no hypervisor
REQUIRED = ("benchmark", "engine", "hypervisor", "metric", "value", "unit")


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
            reason: str) -> dict:
    """A figure that cannot be measured on this combination, and why."""
    return record(benchmark, engine, hypervisor, metric, None, unit, reason=reason)


def derived(benchmark: str, engine: str, hypervisor: str, metric: str, value: float | None,
            unit: str, reason: str) -> dict:
    """A figure computed from others: its value, or null with the reason it has none."""
    if value is None:
        return missing(benchmark, engine, hypervisor, metric, unit, reason)
    return record(benchmark, engine, hypervisor, metric, value, unit)


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
    """A record whose value is the median of the samples, with p10/p90 and the samples."""
    stats = spread(samples)
    return record(benchmark, engine, hypervisor, metric, stats.pop("median"), unit,
                  **stats, **extra)


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b and b > 0 else None


def fmt(value: float | None, spec: str = ".3f", width: int = 8) -> str:
    return f"{value:{width}{spec}}" if value is not None else f"{'-':>{width}}"
