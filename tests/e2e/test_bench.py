"""`trapvisor bench --quick --json F` runs end to end: every record has the schema, every
benchmark/engine combination that exists produced finite positive figures, and every figure
that could not be measured says why. Timings are never judged here (benchmarks do that)."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.records import REQUIRED
from vmm.engines import ENGINES

ROOT = Path(__file__).resolve().parents[2]
BENCHMARKS = ("exits", "nano", "cpu", "micro", "peers", "scale")
POSITIVE = {   # benchmark -> metric suffixes that must be > 0 for every engine that exists
    "exits": ("_us_per_iteration",),
    "nano": ("_us_per_iteration",),
    "cpu": ("seconds_per_run", "minsn_per_second"),
    "scale": ("_passes_per_second", "_rss_mib_per_vm"),
}
NOT_EXPECTED = ("io_parent",)   # monolithic has no parent partition: null with a reason
CHEAP_NATIVE = ("cr_write", "msr_read", "msr_write", "callret", "crwrite", "cpuid", "ptemod")


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    path = tmp_path_factory.mktemp("bench") / "bench.json"
    done = subprocess.run([sys.executable, "-m", "hypervisors.cli", "bench", "--quick",
                           "--json", str(path)], cwd=ROOT, capture_output=True, text=True,
                          timeout=900)
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


@pytest.mark.parametrize("name", sorted(POSITIVE))   # not "benchmark": pytest-benchmark's fixture
def test_every_engine_produced_positive_figures(report, name):
    for engine in ENGINES:
        figures = [r for r in report["records"] if r["benchmark"] == name
                   and r["engine"] == engine and r["hypervisor"] == "monolithic"
                   and r["metric"].endswith(POSITIVE[name])]
        assert figures, f"{name}: nothing measured for engine {engine}"
        for r in figures:
            if r["metric"].startswith(NOT_EXPECTED):
                assert r["value"] is None and r["reason"]
                continue
            if engine == "native" and r["metric"].startswith(CHEAP_NATIVE):
                continue  # a few ns per pass: the difference of two runs may round below 0
            assert r["value"] is not None and r["value"] > 0, r


def test_bare_unicorn_floors_measured(report):
    floors = [r for r in report["records"] if r["metric"].startswith("floor_")]
    assert len(floors) == 4 and all(r["value"] > 0 for r in floors)


def test_only_selects_benchmarks(tmp_path):
    path = tmp_path / "cpu.json"
    done = subprocess.run([sys.executable, "-m", "hypervisors.cli", "bench", "--quick",
                           "--only", "micro", "--json", str(path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert {r["benchmark"] for r in json.loads(path.read_text())["records"]} == {"micro"}


def test_unknown_benchmark_is_refused():
    done = subprocess.run([sys.executable, "-m", "hypervisors.cli", "bench", "--only", "nope"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "unknown benchmark" in done.stderr
