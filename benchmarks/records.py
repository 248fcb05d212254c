"""The figures every benchmark hands back, and the guards that keep them possible.

A figure is a JSON record {benchmark, engine, hypervisor, metric, value, unit}; a measured one
also carries its spread over the repetitions (min, median = value, max, p10, p90, n, samples),
and a figure that cannot be taken has value null and a `reason`. No impossible figure is ever
written or printed: a cost or time that comes out zero or negative, a difference of two timed
runs that is below the timer's resolution or within the baseline runs' own noise, a rate over
such a difference, or a ratio of figures that are not measured becomes a null record whose
reason says which. Verdicts against a goal need MIN_REPS repetitions; with fewer the verdict is
"not enough repetitions".
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field

BARE = "bare-unicorn"    # the engine name of figures measured on emu.cpu.Cpu with no VMM
NONE = "-"               # the hypervisor name of figures that involve no hypervisor
REQUIRED = ("benchmark", "engine", "hypervisor", "metric", "value", "unit")
MIN_REPS = 3             # repetitions a verdict needs
TIMER_RESOLUTION_S = time.get_clock_info("perf_counter").resolution
RESOLUTION_TICKS = 1000  # a difference shorter than this many timer ticks is not a timing
NOISE_FRACTION = 0.02    # runs of the same work differ by a few % back to back on a shared core
NOT_ENOUGH_REPS = "not enough repetitions"
COUNT_UNITS = ("exits", "faults", "bytes", "bool")   # counts: may be 0, exact (no spread)


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


# ----- spread -----------------------------------------------------------------------------------
def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def spread(samples: list[float]) -> dict:
    """Min, median, max, p10, p90 and the count of a non-empty list of samples."""
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples),
            "p10": percentile(samples, 10), "p90": percentile(samples, 90), "n": len(samples),
            "samples": list(samples)}


def with_spread(benchmark: str, engine: str, hypervisor: str, metric: str,
                samples: list[float], unit: str, **extra) -> dict:
    """A positive figure (a cost, a time, a rate, a ratio) from its repetitions: value = median,
    with its spread; null when there is no sample, one is not finite, or one is not positive
    (then the figure is lost in noise, whatever the median says)."""
    reason = positive_problem(samples, unit)
    if reason:
        return missing(benchmark, engine, hypervisor, metric, unit, reason,
                       samples=[s for s in samples if math.isfinite(s)], **extra)
    stats = spread(samples)
    return record(benchmark, engine, hypervisor, metric, stats.pop("median"), unit, **stats,
                  **extra)


def positive_problem(samples: list[float], unit: str) -> str | None:
    """Why these samples give no positive figure, or None."""
    if not samples:
        return "no repetition was measured"
    if not all(math.isfinite(s) for s in samples):
        return "a repetition gave no finite figure"
    median = statistics.median(samples)
    if median <= 0:
        return (f"the median, {median:.3g} {unit}, is not positive: the baseline run took as "
                "long as the measured one or longer")
    if min(samples) <= 0:
        return (f"the repetitions range from {min(samples):.3g} to {max(samples):.3g} {unit}: "
                "the figure is within this machine's timing noise")
    return None


# ----- differences of timed runs ----------------------------------------------------------------
def difference_problem(measured_s: list[float], baseline_s: list[float]) -> str | None:
    """Why `measured - baseline` (seconds, paired by repetition) is no timing, or None: the
    baseline is as long or longer, the difference is below the timer's resolution, or it is
    within the baseline runs' own noise (their spread with MIN_REPS or more, and never less than
    NOISE_FRACTION of their median)."""
    if not measured_s or len(measured_s) != len(baseline_s):
        return "no repetition was measured"
    differences = [m - b for m, b in zip(measured_s, baseline_s)]
    median = statistics.median(differences)
    base = statistics.median(baseline_s)
    if median <= 0:
        return (f"the baseline run ({base * 1e3:.3g} ms) took as long as the measured one or "
                f"longer (median difference {median * 1e3:.3g} ms): no cost can be derived")
    floor = RESOLUTION_TICKS * TIMER_RESOLUTION_S
    if median < floor:
        return (f"the difference, {median * 1e9:.3g} ns, is below {RESOLUTION_TICKS} ticks of "
                f"the timer ({TIMER_RESOLUTION_S * 1e9:.3g} ns each)")
    noise = NOISE_FRACTION * base
    if len(baseline_s) >= MIN_REPS:
        noise = max(noise, max(baseline_s) - min(baseline_s))
    if median < noise:
        return (f"the difference, {median * 1e3:.3g} ms, is within the baseline runs' noise "
                f"({noise * 1e3:.3g} ms: their spread, at least {NOISE_FRACTION:.0%} of their "
                f"{base * 1e3:.3g} ms)")
    return None


def cost(benchmark: str, engine: str, hypervisor: str, metric: str, measured_s: list[float],
         baseline_s: list[float], per: float, unit: str, scale: float = 1e6,
         **extra) -> dict:
    """A cost per event: (measured - baseline) / per * scale for each repetition (µs per event
    with the default scale), or null when the difference is no timing."""
    reason = difference_problem(measured_s, baseline_s)
    timings = {"measured_s": list(measured_s), "baseline_s": list(baseline_s)}
    if reason:
        return missing(benchmark, engine, hypervisor, metric, unit, reason, **timings, **extra)
    samples = [(m - b) / per * scale for m, b in zip(measured_s, baseline_s)]
    return with_spread(benchmark, engine, hypervisor, metric, samples, unit, **timings, **extra)


def rate(benchmark: str, engine: str, hypervisor: str, metric: str, amount: float,
         measured_s: list[float], baseline_s: list[float], unit: str, **extra) -> dict:
    """amount / (measured - baseline) for each repetition: the marginal rate of the extra work
    the measured run does, or null when the difference is no timing."""
    reason = difference_problem(measured_s, baseline_s)
    timings = {"measured_s": list(measured_s), "baseline_s": list(baseline_s)}
    if reason:
        return missing(benchmark, engine, hypervisor, metric, unit, reason, **timings, **extra)
    samples = [amount / (m - b) for m, b in zip(measured_s, baseline_s)]
    return with_spread(benchmark, engine, hypervisor, metric, samples, unit, **timings, **extra)


# ----- ratios and verdicts ----------------------------------------------------------------------
def ratio(a: float | None, b: float | None) -> float | None:
    """a / b when both are positive figures, else None."""
    return a / b if a is not None and b is not None and a > 0 and b > 0 else None


def ratio_of(benchmark: str, engine: str, hypervisor: str, metric: str, a: dict | None,
             b: dict | None, paired: bool = False, **extra) -> dict:
    """The ratio of two measured records. `paired`: their repetitions ran side by side (the
    same rotation), so the ratio is taken per repetition, then its median and range; otherwise
    the ratio of the medians with bounds min(a)/max(b) and max(a)/min(b). Null when either is
    not measured."""
    absent = [r["metric"] if r else "its baseline" for r in (a, b)
              if r is None or r["value"] is None]
    if absent:
        return missing(benchmark, engine, hypervisor, metric, "ratio",
                       f"{' and '.join(absent)} not measured", **extra)
    if paired and len(a.get("samples", ())) == len(b.get("samples", ())) > 0:
        samples = [x / y for x, y in zip(a["samples"], b["samples"])]
        return with_spread(benchmark, engine, hypervisor, metric, samples, "ratio", paired=True,
                           **extra)
    return record(benchmark, engine, hypervisor, metric, a["value"] / b["value"], "ratio",
                  min=a.get("min", a["value"]) / b.get("max", b["value"]),
                  max=a.get("max", a["value"]) / b.get("min", b["value"]),
                  n=min(a.get("n", 1), b.get("n", 1)), paired=False, **extra)


def verdict(figure: dict, goal: float, at_least: bool = False, unit: str = "") -> str:
    """Judge a measured figure's median against `goal` (at most, or at least): fills the
    record's goal, meets_goal and verdict fields and returns the verdict's text with the
    figure's range. A figure of fewer than MIN_REPS repetitions, or none, gets no verdict
    (meets_goal null)."""
    n = figure.get("n", 1)
    figure.update(goal=goal, goal_is=">=" if at_least else "<=")
    if figure["value"] is None:
        figure.update(meets_goal=None, verdict="not measured")
    elif n < MIN_REPS:
        figure.update(meets_goal=None, verdict=f"{NOT_ENOUGH_REPS} ({n} < {MIN_REPS})")
    else:
        ok = figure["value"] >= goal if at_least else figure["value"] <= goal
        figure.update(meets_goal=ok, verdict="ok" if ok else "MISSED")
    text = f"{figure['goal_is']} {goal:g}{' ' + unit if unit else ''} {figure['verdict']}"
    if figure["value"] is not None and "min" in figure:
        text += f" (median; range {figure['min']:.3g}..{figure['max']:.3g}, n={n})"
    return text


# ----- the last check before anything is written ----------------------------------------------
def impossible(r: dict) -> str | None:
    """What makes a record's figure impossible, or None: a value or bound that is not finite, a
    cost, time, rate or ratio that is not positive, a count below 0, a median outside its own
    range."""
    value = r["value"]
    if value is None:
        return None if r.get("reason") else "a null figure without a reason"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"the value {value!r} is not a number"
    bounds = [r[key] for key in ("min", "max") if r.get(key) is not None]
    if not all(math.isfinite(v) for v in (value, *bounds)):
        return "a value or bound is not finite"
    low = 0 if r["unit"] in COUNT_UNITS else math.ulp(0)
    lowest = min([value, *bounds])
    if lowest < low:
        return f"{lowest:.3g} {r['unit']} is below {low:g}"
    if len(bounds) == 2 and not bounds[0] <= value <= bounds[1]:
        return f"the median {value:.3g} lies outside its range {bounds[0]:.3g}..{bounds[1]:.3g}"
    return None


def screen(records: list[dict]) -> list[str]:
    """Null every impossible figure in place (the reason names what was wrong) and return one
    line per record so caught: a benchmark's own guards should have caught it first."""
    caught = []
    for r in records:
        problem = impossible(r)
        if problem:
            caught.append(f"{r['benchmark']} {r['engine']}/{r['hypervisor']} {r['metric']}: "
                          f"{problem}")
            r.update(value=None, reason=f"impossible figure withheld: {problem}")
    return caught


# ----- text -------------------------------------------------------------------------------------
def value_text(r: dict, spec: str = ".4g") -> str:
    """A record's value, spread and unit as a table shows it, or why it has none."""
    if r["value"] is None:
        return f"not measured: {r['reason']}"
    if "min" in r:
        return (f"{r['value']:{spec}} {r['unit']} [{r['min']:{spec}}..{r['max']:{spec}}, "
                f"n={r.get('n', 1)}]")
    return f"{r['value']:{spec}} {r['unit']}"


def fmt(value: float | None, spec: str = ".3f", width: int = 8) -> str:
    return f"{value:{width}{spec}}" if value is not None else f"{'-':>{width}}"


def cells(r: dict, spec: str = ".3f", width: int = 8) -> str:
    """A measured record's median, min and max as three table columns ('-' when null)."""
    if r["value"] is None:
        return " ".join(fmt(None, spec, width) for _ in range(3))
    return " ".join(fmt(r.get(key), spec, width) for key in ("value", "min", "max"))
