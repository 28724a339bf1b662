"""The comparison metrics on hand-computable curves and baselines: where a
curve first reaches a loss, the equivalent-data speedup with its bounds, and
the summaries over seeds with their text."""

import math

import hypothesis
import hypothesis.strategies as st
import numpy as np
import pytest

from matopt.experiments import metrics
from matopt.experiments.metrics import Speedup, Summary

# --- first_reach ------------------------------------------------------------


@pytest.mark.parametrize("target, expected", [(2.5, 5.0), (1.5, 15.0), (1.25, 17.5)])
def test_first_reach_interpolates_a_straight_line(target, expected):
  assert metrics.first_reach([0, 10, 20], [3.0, 2.0, 1.0], target) == pytest.approx(expected, rel=1e-12)


def test_first_reach_is_exact_at_evaluation_points():
  # 0.2 + 1.0 * (0.9 - 0.2) is not 0.9 in floating point: the hit must be the point itself.
  xs, losses = [0.2, 0.9, 1.7], [0.3, 0.2, 0.1]
  assert metrics.first_reach(xs, losses, 0.2) == 0.9
  assert metrics.first_reach(xs, losses, 0.1) == 1.7


def test_first_reach_never_reached_is_none():
  assert metrics.first_reach([1, 2, 3], [3.0, 2.0, 1.5], 1.0) is None
  assert metrics.first_reach([], [], 1.0) is None


def test_first_reach_of_a_curve_that_starts_below_target_is_its_first_point():
  assert metrics.first_reach([10, 20], [1.0, 0.5], 2.0) == 10.0


def test_first_reach_takes_the_first_crossing_of_a_non_monotone_curve():
  assert metrics.first_reach([0, 1, 2, 3], [3.0, 1.0, 3.0, 0.5], 2.0) == pytest.approx(0.5)


def test_first_reach_does_not_count_or_interpolate_across_non_finite_losses():
  assert metrics.first_reach([1, 2, 3], [3.0, math.nan, 1.0], 2.0) == 3.0
  assert metrics.first_reach([1, 2, 3], [3.0, math.inf, 1.0], 2.0) == 3.0
  assert metrics.first_reach([1, 2], [math.nan, math.nan], 2.0) is None


@pytest.mark.parametrize(
  "xs, losses, target, match",
  [
    ([1, 2], [1.0], 1.0, "same length"),
    ([1, 1], [2.0, 1.0], 1.0, "strictly increasing"),
    ([2, 1], [2.0, 1.0], 1.0, "strictly increasing"),
    ([1, 2], [2.0, 1.0], math.nan, "target"),
  ],
)
def test_first_reach_rejects_bad_input(xs, losses, target, match):
  with pytest.raises(ValueError, match=match):
    metrics.first_reach(xs, losses, target)


_curves = st.integers(1, 12).flatmap(
  lambda n: st.tuples(
    st.lists(st.floats(0.01, 10.0), min_size=n, max_size=n), st.lists(st.floats(0.0, 10.0), min_size=n, max_size=n)
  )
)


@hypothesis.settings(deadline=None, max_examples=200)
@hypothesis.given(curve=_curves, targets=st.tuples(st.floats(-1.0, 11.0), st.floats(-1.0, 11.0)))
def test_first_reach_is_monotone_in_target_and_on_the_curve(curve, targets):
  gaps, losses = curve
  xs = np.cumsum(gaps)
  low, high = sorted(targets)
  at_low, at_high = metrics.first_reach(xs, losses, low), metrics.first_reach(xs, losses, high)
  if at_low is not None:  # a higher target is reached no later
    assert at_high is not None and at_high <= at_low
  if at_high is not None:
    assert xs[0] <= at_high <= xs[-1]
    # Where it reaches the target, the curve is at or below it (up to rounding) ...
    assert np.interp(at_high, xs, losses) <= high + 1e-9 * (1 + abs(high))
    # ... and strictly above it at every earlier evaluation.
    assert all(loss > high for x, loss in zip(xs, losses) if x < at_high)
  else:
    assert min(losses) > high


# --- steps_to_target ----------------------------------------------------------

HISTORY = {
  "train": [[s, 0.1 * s, 3.0] for s in range(1, 31)],
  "val": [[10, 1.0, 3.0, 0.1], [20, 2.5, 2.0, 0.2], [30, 4.0, 1.0, 0.3]],
}


def test_steps_to_target_reads_the_validation_curve_in_steps_or_seconds():
  assert metrics.steps_to_target(HISTORY, 1.5) == pytest.approx(25.0)
  assert metrics.steps_to_target(HISTORY, 1.5, time=True) == pytest.approx(3.25)
  assert metrics.steps_to_target(HISTORY, 2.0) == 20.0
  assert metrics.steps_to_target(HISTORY, 0.5) is None


def test_steps_to_target_treats_null_losses_as_not_reached():
  # results.json writes non-finite losses as null.
  history = {"train": [], "val": [[10, 1.0, 3.0, 0.0], [20, 2.0, None, None], [30, 3.0, 1.0, 0.0]]}
  assert metrics.steps_to_target(history, 2.0) == 30.0
  assert metrics.steps_to_target({"train": [], "val": []}, 2.0) is None


# --- equivalent_data_speedup ---------------------------------------------------

BASELINE = {100: 3.0, 200: 2.8, 400: 2.6}


@pytest.mark.parametrize("loss, expected", [(2.7, 2**1.5), (2.9, 2**0.5), (2.65, 2**1.75)])
def test_speedup_interpolates_in_log_steps(loss, expected):
  speedup = metrics.equivalent_data_speedup(BASELINE, loss, 100)
  assert speedup.bound == ""
  assert speedup.ratio == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("loss, expected", [(3.0, 1.0), (2.8, 2.0), (2.6, 4.0)])
def test_speedup_is_exact_at_the_measured_budgets(loss, expected):
  assert metrics.equivalent_data_speedup(BASELINE, loss, 100) == Speedup(expected, "")


def test_speedup_outside_the_measured_range_is_a_bound_not_an_extrapolation():
  better = metrics.equivalent_data_speedup(BASELINE, 2.5, 100)
  worse = metrics.equivalent_data_speedup(BASELINE, 3.1, 100)
  assert better == Speedup(4.0, ">") and str(better) == ">4"
  assert worse == Speedup(1.0, "<") and str(worse) == "<1"
  assert metrics.equivalent_data_speedup(BASELINE, 2.7, 100).__str__() == "2.83"


@pytest.mark.parametrize("loss", [math.inf, math.nan, None])
def test_speedup_of_a_diverged_run_is_below_the_range(loss):
  assert metrics.equivalent_data_speedup(BASELINE, loss, 100) == Speedup(1.0, "<")


def test_speedup_is_relative_to_the_optimizers_own_horizon():
  assert metrics.equivalent_data_speedup(BASELINE, 2.7, 200).ratio == pytest.approx(2**0.5)
  assert metrics.equivalent_data_speedup(BASELINE, 2.5, 200) == Speedup(2.0, ">")
  assert metrics.equivalent_data_speedup(BASELINE, 3.1, 200) == Speedup(0.5, "<")


def test_speedup_reads_budgets_in_any_order():
  shuffled = {400: 2.6, 100: 3.0, 200: 2.8}
  assert metrics.equivalent_data_speedup(shuffled, 2.7, 100).ratio == pytest.approx(2**1.5)


def test_speedup_over_a_non_monotone_baseline_uses_its_first_crossing():
  # The 4x run ended worse than the 2x run (noise or a too-long schedule): the
  # baseline already reaches 2.7 and 2.8 between 1x and 2x, so the 4x run does
  # not count as the budget it needs; 2.5 is reached by no run.
  baseline = {100: 3.0, 200: 2.6, 400: 2.8}
  assert metrics.equivalent_data_speedup(baseline, 2.7, 100).ratio == pytest.approx(2**0.75)
  assert metrics.equivalent_data_speedup(baseline, 2.8, 100).ratio == pytest.approx(2**0.5)
  assert metrics.equivalent_data_speedup(baseline, 2.6, 100) == Speedup(2.0, "")
  assert metrics.equivalent_data_speedup(baseline, 2.5, 100) == Speedup(4.0, ">")


def test_speedup_drops_non_finite_baseline_runs():
  baseline = {100: 3.0, 200: math.inf, 400: 2.6}
  assert metrics.equivalent_data_speedup(baseline, 2.8, 100).ratio == pytest.approx(2.0)
  assert math.isnan(metrics.equivalent_data_speedup({100: math.nan}, 2.8, 100).ratio)


@pytest.mark.parametrize(
  "baseline, horizon, match",
  [
    ({}, 100, "baseline"),
    ({0: 3.0, 100: 2.0}, 100, "positive"),
    (BASELINE, 0, "positive"),
  ],
)
def test_speedup_rejects_bad_input(baseline, horizon, match):
  with pytest.raises(ValueError, match=match):
    metrics.equivalent_data_speedup(baseline, 2.7, horizon)


def test_time_speedup_uses_the_baselines_train_seconds():
  baseline = {10.0: 3.0, 20.0: 2.8, 40.0: 2.6}  # train seconds of the 1x, 2x, 4x runs
  assert metrics.equivalent_time_speedup(baseline, 2.7, 5.0).ratio == pytest.approx(20 * 2**0.5 / 5)
  assert metrics.equivalent_time_speedup(baseline, 2.5, 5.0) == Speedup(8.0, ">")
  assert metrics.equivalent_time_speedup(baseline, 3.1, 5.0) == Speedup(2.0, "<")


# --- summarize, bootstrap, format ---------------------------------------------


def test_summarize_one_value_has_zero_spread():
  assert metrics.summarize([1.5]) == Summary(1.5, 0.0, 1, None, None, 0)


def test_summarize_three_values_uses_the_sample_std():
  summary = metrics.summarize([1.0, 2.0, 3.0])
  assert (summary.mean, summary.std, summary.n, summary.missing) == (2.0, 1.0, 3, 0)


def test_summarize_counts_missing_values_instead_of_dropping_them_silently():
  summary = metrics.summarize([1.0, None, 3.0, math.inf, math.nan])
  assert summary.n == 2 and summary.missing == 3
  assert summary.mean == 2.0 and summary.std == pytest.approx(math.sqrt(2.0))
  empty = metrics.summarize([None, None])
  assert empty.n == 0 and empty.missing == 2 and math.isnan(empty.mean) and math.isnan(empty.std)


def test_summarize_with_an_rng_adds_a_bootstrap_interval_around_the_mean():
  values = [1.0, 2.0, 4.0, 3.5, 2.2]
  summary = metrics.summarize(values, rng=np.random.default_rng(0))
  assert summary.lo < summary.mean < summary.hi
  assert (summary.lo, summary.hi) == metrics.bootstrap(values, rng=np.random.default_rng(0))


def test_bootstrap_is_reproducible_and_contains_the_mean():
  values = [0.9, 1.1, 1.4, 0.7]
  lo, hi = metrics.bootstrap(values, rng=np.random.default_rng(3), reps=500)
  assert (lo, hi) == metrics.bootstrap(values, rng=np.random.default_rng(3), reps=500)
  assert min(values) <= lo < np.mean(values) < hi <= max(values)
  narrow = metrics.bootstrap(values, rng=np.random.default_rng(3), reps=500, level=0.5)
  assert lo <= narrow[0] <= narrow[1] <= hi
  assert metrics.bootstrap([2.0], rng=np.random.default_rng(0)) == (2.0, 2.0)


def test_bootstrap_interval_of_many_normal_values_is_the_normal_one():
  # For n = 400 the mean is close to normal: the 95% interval is about
  # mean ± 1.96 s / sqrt(n), and the 50% one about mean ± 0.674 s / sqrt(n).
  values = np.random.default_rng(7).standard_normal(400)
  mean, half = values.mean(), values.std(ddof=1) / 20
  for level, z in ((0.95, 1.96), (0.5, 0.674)):
    lo, hi = metrics.bootstrap(values, rng=np.random.default_rng(0), level=level)
    assert lo == pytest.approx(mean - z * half, abs=0.15 * z * half)
    assert hi == pytest.approx(mean + z * half, abs=0.15 * z * half)


@pytest.mark.parametrize(
  "values, kw, match",
  [
    ([], {}, "at least one"),
    ([1.0, math.nan], {}, "finite"),
    ([1.0, 2.0], {"level": 1.0}, "level"),
    ([1.0, 2.0], {"reps": 0}, "reps"),
  ],
)
def test_bootstrap_rejects_bad_input(values, kw, match):
  with pytest.raises(ValueError, match=match):
    metrics.bootstrap(values, rng=np.random.default_rng(0), **kw)


@pytest.mark.parametrize(
  "summary, kw, text",
  [
    (Summary(1.234, 0.041, 3, None, None, 0), {}, "1.23 ± 0.04"),
    (Summary(1234.4, 10.2, 3, None, None, 0), {"digits": 0}, "1234 ± 10"),
    (Summary(1.234, 0.0, 1, None, None, 0), {}, "1.23 (n=1)"),
    (Summary(1.234, 0.041, 3, 1.19, 1.27, 0), {}, "1.23 ± 0.04 [1.19, 1.27]"),
    (Summary(1.234, 0.041, 3, None, None, 1), {}, "1.23 ± 0.04 (1/4 not reached)"),
    (Summary(math.nan, math.nan, 0, None, None, 3), {}, "not reached (3/3)"),
    (Summary(math.nan, math.nan, 0, None, None, 2), {"missing_label": "diverged"}, "diverged (2/2)"),
    (Summary(1.234, 0.0, 1, None, None, 1), {}, "1.23 (n=1; 1/2 not reached)"),
    (Summary(math.nan, math.nan, 0, None, None, 0), {}, "—"),
  ],
)
def test_format_summary(summary, kw, text):
  assert metrics.format_summary(summary, **kw) == text


def test_speedups_over_seeds_keep_their_bounds():
  mixed = metrics.summarize_speedups([Speedup(2.0, ""), Speedup(3.0, ""), Speedup(4.0, ">")])
  assert mixed.summary.n == 2 and mixed.summary.mean == 2.5
  assert (mixed.above, mixed.below, mixed.above_at, mixed.below_at) == (1, 0, 4.0, None)
  assert metrics.format_speedups(mixed) == "2.50 ± 0.71 (1/3 >4)"
  # Different seeds' time budgets give different bounds: the weakest holds for all.
  above = metrics.summarize_speedups([Speedup(8.0, ">"), Speedup(6.0, ">")])
  assert metrics.format_speedups(above) == ">6"
  below = metrics.summarize_speedups([Speedup(1.0, "<"), Speedup(0.5, "<"), Speedup(1.5, "")])
  assert metrics.format_speedups(below) == "1.50 (n=1; 2/3 <1)"
  split = metrics.summarize_speedups([Speedup(5.0, ">"), Speedup(0.5, "<")])
  assert metrics.format_speedups(split) == "1/2 >5; 1/2 <0.5"
  assert metrics.format_speedups(metrics.summarize_speedups([Speedup(math.nan, "")])) == "no baseline (1/1)"
  assert metrics.format_speedups(metrics.summarize_speedups([])) == "—"
