"""`trapvisor bench --quick --only vms` measures migration while a guest dirties memory, under
both hypervisors and at each rate, and parent servicing: every figure is there, possible and
with its spread (timings are never judged). Marked `bench`: `pytest -m bench -k vms`."""
from __future__ import annotations

import json

import pytest
from conftest import trapvisor

from benchmarks.records import COUNT_UNITS, impossible
from benchmarks.vms_moves import SERVICE_GUESTS, SPINS, _pages_per_ms

pytestmark = pytest.mark.bench


@pytest.fixture(scope="module")
def vms_json(tmp_path_factory) -> list[dict]:
    path = tmp_path_factory.mktemp("bench") / "vms.json"
    done = trapvisor("bench", "--quick", "--only", "vms", "--json", str(path), timeout=1500)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(path.read_text())["records"]


@pytest.fixture(scope="module")
def vms_records(vms_json) -> dict:
    return {(r["hypervisor"], r["metric"]): r for r in vms_json}


def test_vms_records_are_possible_with_their_spread(vms_records):
    for r in vms_records.values():
        assert impossible(r) is None, r
        if r["value"] is not None and r["unit"] not in COUNT_UNITS:
            assert r["min"] <= r["value"] <= r["max"] and r["n"] >= 1, r


@pytest.mark.parametrize("hypervisor", ["monolithic", "micro"])
def test_vms_migration_rows_for_every_dirtying_rate(vms_records, hypervisor):
    for spins in SPINS[True]:
        where = f"migration/dirty-{_pages_per_ms(spins):.0f}-pages-per-ms"
        for key in ("downtime_s", "total_s", "full_capture_s", "rounds"):
            assert vms_records[(hypervisor, f"{where}/{key}")]["value"] > 0
        assert vms_records[(hypervisor, f"{where}/bytes")]["value"] > 4096
        assert (hypervisor, f"{where}/downtime_over_full_capture") in vms_records
    fast, slow = (f"migration/dirty-{_pages_per_ms(s):.0f}-pages-per-ms/rounds"
                  for s in SPINS[True])
    assert vms_records[(hypervisor, fast)]["value"] >= vms_records[(hypervisor, slow)]["value"]


def test_vms_servicing_rows(vms_records):
    for key in ("restart_s", "total_s"):
        assert vms_records[("micro", f"servicing/{key}")]["value"] > 0
    for name in SERVICE_GUESTS:
        assert vms_records[("micro", f"servicing/{name}/paused_s")]["value"] > 0
        assert vms_records[("micro", f"servicing/{name}/bytes")]["value"] > 4096


def test_vms_has_the_schedulers_fairness_per_vm_and_its_switch_cost(vms_json):
    """Issue 14 puts the scheduler's figures in section vms: one fairness record per VM (1:2:4
    shares; counted in guest instructions, so exact, not a timing) and the switch cost."""
    fairness = [r for r in vms_json if r["metric"] == "share_received_over_entitled"]
    assert sorted(r["shares"] for r in fairness) == [1000, 2000, 4000]
    assert all(r["benchmark"] == "vms" and r["value"] > 0 for r in fairness), fairness
    assert {r["hypervisor"] for r in vms_json if r["metric"] == "vm_switch_us"} == {
        "monolithic", "micro"}
