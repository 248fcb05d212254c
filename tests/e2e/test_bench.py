"""`trapvisor bench --quick --json F` runs end to end: every record has the schema, every
benchmark/engine combination that exists produced finite figures, and every figure that could not
be measured says why. Timings are never judged here (benchmarks do that). Marked `bench`: the
default `pytest` run leaves it out, `pytest -m bench` runs it (as .ci/run does)."""
from __future__ import annotations

import json
import math

import pytest

from benchmarks.records import REQUIRED
from conftest import trapvisor
from vmm.engines import ENGINES

pytestmark = pytest.mark.bench

BENCHMARKS = ("exits", "events", "nano", "cpu", "micro", "peers", "scale")
MEASURED = {   # benchmark -> metric suffixes that every engine that exists must have a figure for
    "exits": ("_us_per_iteration",),
    "nano": ("_us_per_iteration",),
    "cpu": ("seconds_per_run", "minsn_per_second"),
    "scale": ("_passes_per_second", "_rss_mib_per_vm"),
}
NOT_EXPECTED = ("io_parent",)   # monolithic has no parent partition: null with a reason


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    path = tmp_path_factory.mktemp("bench") / "bench.json"
    done = trapvisor("bench", "--quick", "--json", str(path), timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert done.stderr.strip(), "no progress was shown on stderr"
    return json.loads(path.read_text())


def test_every_record_has_the_schema(report):
    assert report["records"]
    for r in report["records"]:
        assert all(key in r for key in REQUIRED), r
        if r["value"] is None:
            assert r.get("reason"), f"a null figure without a reason: {r}"
        else:
            assert isinstance(r["value"], (int, float)) and math.isfinite(r["value"]), r


def test_every_benchmark_reported(report):
    assert {r["benchmark"] for r in report["records"]} == set(BENCHMARKS)


@pytest.mark.parametrize("name", sorted(MEASURED))   # not "benchmark": pytest-benchmark's fixture
def test_every_engine_produced_figures(report, name):
    for engine in ENGINES:
        figures = [r for r in report["records"] if r["benchmark"] == name
                   and r["engine"] == engine and r["hypervisor"] == "monolithic"
                   and r["metric"].endswith(MEASURED[name])]
        assert figures, f"{name}: nothing measured for engine {engine}"
        for r in figures:
            if r["metric"].startswith(NOT_EXPECTED):
                assert r["value"] is None and r["reason"]
            else:
                assert r["value"] is not None, r


def test_bare_unicorn_floors_measured(report):
    floors = [r for r in report["records"] if r["metric"].startswith("floor_")]
    assert len(floors) == 4 and all(r["value"] is not None for r in floors)


def test_only_selects_benchmarks(tmp_path):
    path = tmp_path / "cpu.json"
    done = trapvisor("bench", "--quick", "--only", "micro", "--json", str(path), timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert {r["benchmark"] for r in json.loads(path.read_text())["records"]} == {"micro"}
