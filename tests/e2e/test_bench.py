"""`trapvisor bench --quick --json F --plot P` runs end to end and its output keeps the bench's
promises: every record has the schema, every figure is possible (positive, finite, its median
inside its range) or null with a reason, every measured figure carries its spread, the run is
labelled indicative in the header, the JSON and on each record, and no verdict is given on one
repetition. Timings are never judged here. Marked `bench`: the default `pytest` run leaves it
out, `pytest -m bench` runs it (as .ci/run does)."""
from __future__ import annotations

import json

import pytest

from benchmarks.records import COUNT_UNITS, NOT_ENOUGH_REPS, REQUIRED, impossible
from benchmarks.suite import BENCHMARKS
from conftest import trapvisor
from vmm.engines import ENGINES

pytestmark = pytest.mark.bench

PER_ENGINE = {   # benchmark -> metric suffixes every engine that exists must have a record for
    "exits": ("_us_per_iteration",),
    "nano": ("_us_per_iteration",),
    "cpu": ("seconds_per_run",),
    "scale": ("_passes_per_second", "_rss_mib_per_vm"),
}
NOT_EXPECTED = ("io_parent",)   # monolithic has no parent partition: null with a reason


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[dict, str, bytes]:
    directory = tmp_path_factory.mktemp("bench")
    done = trapvisor("bench", "--quick", "--json", str(directory / "bench.json"), "--plot",
                     str(directory / "bench.png"), timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert done.stderr.strip(), "no progress was shown on stderr"
    return (json.loads((directory / "bench.json").read_text()), done.stdout,
            (directory / "bench.png").read_bytes())


@pytest.fixture(scope="module")
def report(run) -> dict:
    return run[0]


def test_every_record_has_the_schema_and_a_possible_figure(report):
    assert report["records"]
    for r in report["records"]:
        assert all(key in r for key in REQUIRED), r
        assert impossible(r) is None, r


def test_no_figure_was_withheld_by_the_last_screen(run):
    """The benchmarks' own guards catch every impossible figure before the suite's screen."""
    report, stdout, _ = run
    assert "WITHHELD" not in stdout
    assert not [r for r in report["records"] if "withheld" in (r.get("reason") or "")]


def test_every_measured_figure_carries_its_spread(report):
    for r in report["records"]:
        if r["value"] is not None and r["unit"] not in COUNT_UNITS:
            assert r["min"] <= r["value"] <= r["max"] and r["n"] >= 1, r


def test_a_quick_run_is_labelled_indicative_everywhere(run):
    report, stdout, png = run
    assert report["quick"] and report["indicative"].startswith("INDICATIVE")
    assert all(r["indicative"] for r in report["records"])
    assert stdout.splitlines()[0].startswith("*** INDICATIVE ONLY (--quick)")
    assert png.startswith(b"\x89PNG")


def test_no_verdict_on_one_repetition(run):
    report, stdout, _ = run
    judged = [r for r in report["records"] if "verdict" in r]
    assert judged, "no figure was judged against a goal"
    for r in judged:
        assert r["meets_goal"] is None, r
        assert r["verdict"] == "not measured" or r["verdict"].startswith(NOT_ENOUGH_REPS), r
    assert " ok" not in stdout.replace("not enough", "") and "MISSED" not in stdout
    assert "holds:" not in stdout and "DIFFERS:" not in stdout


def test_every_benchmark_reported(report):
    assert {r["benchmark"] for r in report["records"]} == set(BENCHMARKS)


@pytest.mark.parametrize("name", sorted(PER_ENGINE))   # not "benchmark": pytest-benchmark's fixture
def test_every_engine_has_its_records(report, name):
    for engine in ENGINES:
        figures = [r for r in report["records"] if r["benchmark"] == name
                   and r["engine"] == engine and r["hypervisor"] == "monolithic"
                   and r["metric"].endswith(PER_ENGINE[name])]
        assert figures, f"{name}: no record for engine {engine}"
        for r in figures:
            if r["metric"].startswith(NOT_EXPECTED):
                assert r["value"] is None and "monolithic" in r["reason"]


def test_the_bare_machine_and_qemu_rows_are_there(report):
    metrics = {(r["benchmark"], r["engine"], r["metric"]) for r in report["records"]}
    assert {("cpu", "unicorn-cpu-tlb", "seconds_per_run"),
            ("cpu", "unicorn-virtual-split-tlb", "seconds_per_run"),
            ("cpu", "native", "x_bare_fastest")} <= metrics
    assert len([m for m in metrics if m[0] == "exits" and m[2].startswith("floor_")]) == 4
    assert ("peers", "qemu-tcg", "cpu_bound_ns_per_pass") in metrics
    assert ("peers", "qemu-tcg", "hello_wall_seconds") in metrics


def test_only_selects_benchmarks(tmp_path):
    path = tmp_path / "micro.json"
    done = trapvisor("bench", "--quick", "--only", "micro", "--json", str(path), timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert {r["benchmark"] for r in json.loads(path.read_text())["records"]} == {"micro"}
