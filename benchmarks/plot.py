"""Charts of `trapvisor bench --plot FILE.png`: one panel per benchmark, a bar per measured
figure of its main metric, grouped by engine/hypervisor. matplotlib is the optional `bench`
extra and is imported only here, only when a chart is asked for."""
from __future__ import annotations

from pathlib import Path

PANELS = {   # benchmark -> (metric suffix to draw, axis label)
    "exits": ("_us_per_iteration", "µs per iteration"),
    "nano": ("_us_per_iteration", "µs per iteration"),
    "cpu": ("minsn_per_second", "M instructions/s"),
    "peers": ("_ns", "ns per access"),
    "scale": ("_passes_per_second", "passes/s (all VMs)"),
}


class PlotUnavailable(RuntimeError):
    """matplotlib is not installed."""


def require():
    """The pyplot module, or a clear error saying how to install it."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as pyplot
    except ImportError as exc:
        raise PlotUnavailable("--plot needs matplotlib: pip install 'trapvisor[bench]' "
                              f"(or pip install matplotlib) [{exc}]") from exc
    return pyplot


def panel_data(records: list[dict], benchmark: str) -> dict[str, dict[str, float]]:
    """series (engine/hypervisor) -> {metric: value} for one panel."""
    suffix = PANELS[benchmark][0]
    series: dict[str, dict[str, float]] = {}
    for r in records:
        if r["benchmark"] == benchmark and r["metric"].endswith(suffix) and r["value"]:
            label = r["metric"].removesuffix(suffix) or r["metric"]
            series.setdefault(f"{r['engine']}/{r['hypervisor']}", {})[label] = r["value"]
    return series


def draw(records: list[dict], path: Path) -> None:
    pyplot = require()
    panels = [b for b in PANELS if panel_data(records, b)]
    figure, axes = pyplot.subplots(len(panels) or 1, 1, figsize=(12, 3.6 * max(len(panels), 1)),
                                   squeeze=False)
    for ax, benchmark in zip(axes[:, 0], panels):
        series = panel_data(records, benchmark)
        labels = sorted({label for values in series.values() for label in values})
        width = 0.8 / len(series)
        for i, (name, values) in enumerate(sorted(series.items())):
            xs = [j + i * width for j in range(len(labels))]
            ax.bar(xs, [values.get(label, 0) for label in labels], width, label=name)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(labels))], labels, rotation=20,
                      fontsize=8)
        ax.set_ylabel(PANELS[benchmark][1])
        ax.set_yscale("log")
        ax.set_title(benchmark)
        ax.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    pyplot.close(figure)
