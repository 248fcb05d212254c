"""The bench's guards on figures, fed fake timings (nothing here is timed): a difference of two
runs becomes a cost or a rate only when it is a timing; otherwise the record is null and says
why. Spread, paired ratios, verdicts and the last screen before anything is written."""
from __future__ import annotations

import math

import pytest

from benchmarks.records import (MIN_REPS, NOT_ENOUGH_REPS, TIMER_RESOLUTION_S, cost, impossible,
                                rate, ratio_of, record, screen, verdict, with_spread)

ARGS = ("exits", "trap", "monolithic")


def test_a_cost_is_the_median_difference_per_event_with_its_range():
    measured, baseline = [2.0, 2.2, 2.1], [1.0, 1.0, 1.0]
    r = cost(*ARGS, "out_us", measured, baseline, per=1_000_000, unit="us")
    assert r["value"] == pytest.approx(1.1)
    assert (r["min"], r["max"], r["n"]) == (pytest.approx(1.0), pytest.approx(1.2), 3)
    assert r["measured_s"] == measured and r["baseline_s"] == baseline


def test_a_baseline_longer_than_the_measurement_gives_no_figure():
    r = cost(*ARGS, "io_exit_us", [1.0], [1.2], per=1000, unit="us")
    assert r["value"] is None
    assert "took as long as the measured one or longer" in r["reason"]


def test_a_difference_below_the_timer_resolution_gives_no_figure():
    tiny = TIMER_RESOLUTION_S * 10
    r = rate(*ARGS, "console_bytes_per_second", 1 << 20, [tiny * 2], [tiny], "B/s")
    assert r["value"] is None and "below" in r["reason"] and "ticks" in r["reason"]


def test_a_difference_inside_the_baseline_runs_spread_gives_no_figure():
    # the baseline runs spread over 0.2 s; the measured runs are 0.05 s longer
    baseline = [1.0, 1.1, 1.2]
    r = cost(*ARGS, "cpu_bound_seconds", [b + 0.05 for b in baseline], baseline, per=1,
             unit="s", scale=1)
    assert r["value"] is None and "noise" in r["reason"]


def test_one_repetition_still_needs_the_difference_to_clear_a_fraction_of_the_baseline():
    r = cost(*ARGS, "x", [1.001], [1.0], per=1, unit="s", scale=1)
    assert r["value"] is None and "noise" in r["reason"]
    r = cost(*ARGS, "x", [1.5], [1.0], per=1, unit="s", scale=1)
    assert r["value"] == pytest.approx(0.5) and r["n"] == 1


def test_a_negative_repetition_voids_a_positive_median():
    r = with_spread(*ARGS, "x_us", [-0.5, 1.0, 1.2], "us")
    assert r["value"] is None and "noise" in r["reason"]


def test_no_repetition_and_non_finite_samples_give_no_figure():
    assert "no repetition" in with_spread(*ARGS, "x", [], "us")["reason"]
    assert "finite" in with_spread(*ARGS, "x", [1.0, math.inf], "us")["reason"]
    assert "no repetition" in cost(*ARGS, "x", [], [], per=1, unit="us")["reason"]


def test_a_rate_is_the_extra_work_over_the_extra_time():
    r = rate(*ARGS, "block_mb_per_second", 10.0, [3.0, 4.0, 3.5], [1.0, 1.0, 1.0], "MB/s")
    assert r["value"] == pytest.approx(10 / 2.5)
    assert (r["min"], r["max"]) == (pytest.approx(10 / 3), pytest.approx(5.0))


def test_a_ratio_of_records_that_ran_side_by_side_is_paired():
    a = with_spread(*ARGS, "a", [2.0, 4.0, 3.0], "s")
    b = with_spread(*ARGS, "b", [1.0, 4.0, 1.0], "s")
    r = ratio_of(*ARGS, "a_x_b", a, b, paired=True)
    assert r["paired"] and r["samples"] == [2.0, 1.0, 3.0]
    assert (r["value"], r["min"], r["max"]) == (2.0, 1.0, 3.0)


@pytest.mark.parametrize("b_samples, paired", [([1.0], True), ([1.0, 2.0, 1.5], False)])
def test_a_ratio_of_unpaired_records_carries_bounds(b_samples, paired):
    a = with_spread(*ARGS, "a", [2.0, 4.0, 3.0], "s")
    b = with_spread(*ARGS, "b", b_samples, "s")
    r = ratio_of(*ARGS, "a_x_b", a, b, paired=paired)
    assert not r["paired"] and r["value"] == 3.0 / b["value"]
    assert (r["min"], r["max"]) == (2.0 / max(b_samples), 4.0 / min(b_samples))


def test_a_ratio_with_a_missing_side_says_which():
    a = with_spread(*ARGS, "a_us", [2.0], "us")
    b = cost(*ARGS, "b_us", [1.0], [2.0], per=1, unit="us")
    r = ratio_of(*ARGS, "a_x_b", a, b)
    assert r["value"] is None and r["reason"] == "b_us not measured"
    assert ratio_of(*ARGS, "a_x_b", a, None)["reason"] == "its baseline not measured"


@pytest.mark.parametrize("samples, goal, at_least, meets, text", [
    ([0.8, 0.9, 1.0], 1.0, False, True, "<= 1 ok"),
    ([1.1, 1.2, 1.3], 1.0, False, False, "<= 1 MISSED"),
    ([12.0, 11.0, 15.0], 10.0, True, True, ">= 10 ok"),
    ([0.5], 1.0, False, None, f"<= 1 {NOT_ENOUGH_REPS} (1 < {MIN_REPS})"),
    ([0.5, 0.6], 1.0, False, None, f"<= 1 {NOT_ENOUGH_REPS} (2 < {MIN_REPS})"),
])
def test_verdicts_need_repetitions(samples, goal, at_least, meets, text):
    figure = with_spread(*ARGS, "x", samples, "us")
    assert verdict(figure, goal, at_least).startswith(text + " (median; range ")
    assert figure["meets_goal"] is meets and figure["goal"] == goal


def test_a_figure_that_is_not_measured_gets_no_verdict():
    figure = cost(*ARGS, "x", [1.0], [2.0], per=1, unit="us")
    assert verdict(figure, 1.0) == "<= 1 not measured" and figure["meets_goal"] is None


@pytest.mark.parametrize("r, problem", [
    (record(*ARGS, "io_exit_us", -19.37, "us"), "below"),
    (record(*ARGS, "x", 0.0, "ratio"), "below"),
    (record(*ARGS, "x", math.nan, "B/s"), "not finite"),
    (record(*ARGS, "x", 2.0, "us", min=-1.0, max=3.0), "below"),
    (record(*ARGS, "x", 5.0, "us", min=1.0, max=3.0), "outside its range"),
    (record(*ARGS, "x", None, "us"), "without a reason"),
    (record(*ARGS, "x", True, "us"), "not a number"),
])
def test_the_screen_withholds_impossible_figures(r, problem):
    caught = screen([r])
    assert len(caught) == 1 and problem in caught[0]
    assert r["value"] is None and r["reason"].startswith("impossible figure withheld")


@pytest.mark.parametrize("r", [
    record(*ARGS, "x_exits_per_iteration", 0.0, "exits"),
    record(*ARGS, "x_pattern_holds", 0.0, "bool"),
    record(*ARGS, "x", None, "us", reason="not installed"),
    with_spread(*ARGS, "x", [1.0, 2.0, 3.0], "us"),
])
def test_the_screen_passes_possible_figures(r):
    assert impossible(r) is None and screen([r]) == []
