"""The bench runner's bookkeeping, with nothing timed: the registration list, the indicative
label of short runs, bad options, and a chart drawn from fake records (spread whiskers, null
figures named, the indicative label in the title)."""
from __future__ import annotations

import types

import pytest

from benchmarks import suite
from benchmarks.loops import Context
from benchmarks.records import MIN_REPS, cost, missing, with_spread


def context(quick: bool, reps: int) -> Context:
    return Context(quick, reps, ["native"], {}, lambda text: None)


def test_every_registered_module_is_a_benchmark():
    assert len(suite.BENCHMARKS) == len(suite.MODULES)
    for name, module in suite.BENCHMARKS.items():
        assert module.NAME == name and module.TITLE and callable(module.run)


@pytest.mark.parametrize("quick, reps, label", [
    (True, 1, "INDICATIVE ONLY (--quick)"),
    (True, 7, "INDICATIVE ONLY (--quick)"),
    (False, MIN_REPS - 1, "INDICATIVE ONLY: 2 repetition(s)"),
    (False, MIN_REPS, None),
])
def test_short_runs_are_labelled_indicative(quick, reps, label):
    found = suite.indicative(context(quick, reps))
    assert (found is None) if label is None else found.startswith(label)


def test_the_header_leads_with_the_label():
    info = {"python": "3", "unicorn": "2", "cpus": 2, "cpu": "x", "loadavg_start": 0.0,
            "loadavg_end": 0.0, "seconds": 1.0}
    assert suite.header(info, context(True, 1))[0].startswith("*** INDICATIVE ONLY")
    assert not suite.header(info, context(False, 7))[0].startswith("***")


@pytest.mark.parametrize("argv", [["--reps", "0"], ["--reps", "many"], ["--only", "nope"]])
def test_bad_options_are_refused(argv, capsys):
    with pytest.raises(SystemExit) as stop:
        suite.build_parser().parse_args(argv)
    assert stop.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_the_chart_shows_spread_and_the_label(tmp_path):
    pytest.importorskip("matplotlib")
    from benchmarks import plot
    records = [with_spread("cpu", engine, "monolithic", "minsn_per_second", samples, "Minsn/s")
               for engine, samples in (("native", [90.0, 100.0, 120.0]), ("trap", [40.0]))]
    records.append(cost("exits", "trap", "monolithic", "cpuid_us_per_iteration", [1.0], [2.0],
                        per=1, unit="us"))
    records.append(missing("exits", "bt", "monolithic", "io_us_per_iteration", "us", "absent"))
    path = tmp_path / "chart.png"
    plot.draw(records, path, "INDICATIVE ONLY (--quick)")
    assert path.read_bytes().startswith(b"\x89PNG")
    rows, absent = plot.panel_rows(records, "cpu")
    assert [(group, series) for group, series, _ in rows] == [
        ("", "native/monolithic"), ("", "trap/monolithic")] and absent == 0
    rows, absent = plot.panel_rows(records, "exits")
    assert rows == [] and absent == 2


def test_without_qemu_the_peer_rows_say_so(monkeypatch):
    from benchmarks import peers
    monkeypatch.setattr(peers.shutil, "which", lambda name: None)
    monkeypatch.setattr(peers, "memops_section", lambda ctx, section: None)
    section = peers.run(context(True, 1))
    assert {r["metric"] for r in section.records} == {
        "cpu_bound_ns_per_pass", "io_heavy_ns_per_pass", "hello_wall_seconds"}
    for r in section.records:
        assert r["value"] is None and "qemu-system-i386 is not installed" in r["reason"]
    assert "not measured: qemu-system-i386 is not installed" in "\n".join(section.lines)


def test_a_failing_benchmark_is_reported_not_raised():
    def run(ctx):
        raise RuntimeError("qemu-system-i386 exited 2\nmore detail")

    broken = types.ModuleType("benchmarks.broken")
    broken.NAME, broken.TITLE, broken.run = "broken", "0. Broken", run
    section = suite.run_one(broken, context(True, 1))
    [r] = section.records
    assert r["value"] is None and r["metric"] == "failed"
    assert r["reason"] == "benchmarks.broken failed: RuntimeError: qemu-system-i386 exited 2"
    assert section.lines == [f"  not measured: {r['reason']}"]


@pytest.mark.parametrize("win, lose, holds", [
    ([1.0, 1.1, 1.2], [2.0, 2.1, 2.2], True),
    ([2.0, 2.1, 2.2], [1.0, 1.1, 1.2], False),
    ([1.0, 1.5, 2.1], [2.0, 2.1, 2.2], None),
])
def test_an_adams_agesen_verdict_needs_separated_ranges(win, lose, holds):
    from benchmarks import nano
    figures = [with_spread("nano", e, "monolithic", "in_us_per_iteration", samples, "us")
               for e, samples in (("bt", win), ("vtx", lose))]
    assert nano.separated(*figures) is holds
