"""Charts of `trapvisor bench --plot FILE.png`: one panel per benchmark, a horizontal bar per
measured figure of its main metric (the median), whiskers from the minimum to the maximum of its
repetitions, one colour per engine/hypervisor. Labels sit on the vertical axis, one line each,
so they never overlap; figures that could not be measured are counted in the panel's title (the
table and the JSON say why). A --quick (or under-repeated) run carries its INDICATIVE label in
the title. matplotlib is the optional `bench` extra and is imported only here, only when a chart
is asked for."""
from __future__ import annotations

from pathlib import Path

PANELS = {   # benchmark -> (metric suffix to draw, axis label)
    "exits": ("_us_per_iteration", "µs per iteration"),
    "nano": ("_us_per_iteration", "µs per iteration"),
    "cpu": ("minsn_per_second", "M instructions/s"),
    "peers": ("_ns", "ns per access"),
    "scale": ("_passes_per_second", "passes/s (all VMs)"),
}
BAR_INCHES = 0.16         # height of one bar
PANEL_INCHES = 1.2        # title, axis and legend of one panel


class PlotUnavailable(RuntimeError):
    """matplotlib is not installed."""


def require():
    """The pyplot module, or a clear error saying how to install it."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        from matplotlib import pyplot
    except ImportError as exc:
        raise PlotUnavailable("--plot needs matplotlib: pip install 'trapvisor[bench]' "
                              f"(or pip install matplotlib) [{exc}]") from exc
    return pyplot


def panel_rows(records: list[dict], benchmark: str) -> tuple[list[tuple[str, str, dict]], int]:
    """(group, series, record) per measured figure of one panel, in the records' order (group:
    the metric without its suffix, empty when nothing is left; series: engine/hypervisor), and
    how many of the panel's figures are not measured (the table and the JSON say why)."""
    suffix = PANELS[benchmark][0]
    mine = [r for r in records if r["benchmark"] == benchmark and r["metric"].endswith(suffix)]
    rows = [(r["metric"].removesuffix(suffix), f"{r['engine']}/{r['hypervisor']}", r)
            for r in mine if r["value"] is not None]
    return rows, len(mine) - len(rows)


def draw(records: list[dict], path: Path, indicative: str | None = None) -> None:
    pyplot = require()
    panels = [(b, *panel_rows(records, b)) for b in PANELS]
    panels = [panel for panel in panels if panel[1]]
    heights = [PANEL_INCHES + BAR_INCHES * len(rows) for _, rows, _ in panels] or [PANEL_INCHES]
    figure, axes = pyplot.subplots(len(heights), 1, figsize=(11, sum(heights) + 0.8),
                                   squeeze=False, layout="constrained",
                                   gridspec_kw={"height_ratios": heights})
    series = sorted({name for _, rows, _ in panels for _, name, _ in rows})
    colours = {name: pyplot.get_cmap("tab10")(i % 10) for i, name in enumerate(series)}
    for ax, (benchmark, rows, absent) in zip(axes[:, 0], panels):
        draw_panel(ax, benchmark, rows, absent, colours)
    title = "trapvisor bench: bars are medians, whiskers min..max over the repetitions"
    if indicative:
        title = f"{indicative}\n{title}"
    figure.suptitle(title, fontsize=9, color="firebrick" if indicative else "black")
    figure.savefig(path, dpi=110)
    pyplot.close(figure)


def draw_panel(ax, benchmark: str, rows: list, absent: int, colours: dict) -> None:
    """One benchmark: a bar per row from the top, its label `group  series` on the y axis."""
    from matplotlib.ticker import LogLocator
    positions = list(range(len(rows)))[::-1]
    for y, (_, name, r) in zip(positions, rows):
        low, high = r.get("min", r["value"]), r.get("max", r["value"])
        ax.barh(y, r["value"], height=0.8, color=colours[name],
                xerr=[[r["value"] - low], [high - r["value"]]],
                error_kw={"elinewidth": 0.8, "capsize": 2})
    ax.set_yticks(positions, [f"{group}  {name}".strip() for group, name, _ in rows], fontsize=7)
    ax.set_ylim(-0.7, len(rows) - 0.3)
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))   # 1-2-5 steps never crowd
    ax.xaxis.set_major_formatter("{x:g}")
    ax.xaxis.set_minor_formatter("")
    ax.set_xlabel(PANELS[benchmark][1], fontsize=8)
    ax.tick_params(axis="x", labelsize=7)
    note = f" ({absent} figures not measured: the table and the JSON say why)" if absent else ""
    ax.set_title(f"{benchmark}{note}", fontsize=9, loc="left")
    ax.grid(axis="x", which="both", linewidth=0.3, alpha=0.5)
