"""Which optimizer reaches a given loss sooner: metrics on training histories.

Pure functions of plain lists and NumPy arrays (no JAX, no files), for the
runner and the report:

- :func:`first_reach` / :func:`steps_to_target`: the step (or training
  second) at which a validation curve first reaches a target loss, e.g. the
  baseline's final loss;
- :func:`equivalent_data_speedup` / :func:`equivalent_time_speedup`: how many
  times longer the baseline must train to reach an optimizer's final loss,
  from baseline runs at several horizons (Wen et al. 2025), as a
  :class:`Speedup` that is a bound, not an extrapolation, outside the
  measured horizons;
- :func:`summarize`, :func:`bootstrap`, :func:`summarize_speedups` and the
  ``format_*`` helpers: a metric over seeds as mean ± std with its count,
  runs that never reached (or fell outside the measured range) counted
  rather than dropped.

A history is the dict :func:`matopt.experiments.train.train` records:
``history["val"]`` holds ``[step, train_seconds, val_loss, val_aux]`` per
evaluation (steps increasing; ``train_seconds`` excludes compilation and
evaluation), ``history["train"]`` ``[step, train_seconds, train_loss]``.

References:
  Wen, Hall, Ma and Liang, "Fantastic Pretraining Optimizers and Where to
  Find Them", arXiv:2509.02046, 2025.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import ArrayLike


def first_reach(xs: ArrayLike, losses: ArrayLike, target: float) -> float | None:
  r"""The first ``x`` at which the piecewise-linear curve through the points reaches ``target``.

  With evaluations :math:`(x_i, \ell_i)`, :math:`x_i` strictly increasing,
  and :math:`i` the first index with :math:`\ell_i \le` ``target``:

  .. math::

     x^\star = x_{i-1} + \frac{\ell_{i-1} - \mathrm{target}}{\ell_{i-1} - \ell_i}\,(x_i - x_{i-1}),

  which is :math:`x_i` itself when :math:`\ell_i = \mathrm{target}` (returned
  exactly, not recomputed). Nothing is known before the first evaluation,
  so a curve whose first point is already at or below the target reaches it
  at :math:`x_0` (an upper bound on the true crossing). A non-finite loss
  (a NaN evaluation, a ``None`` from JSON) never counts as reached, and the
  curve is not interpolated across it: the next point that reaches the
  target does so at its own ``x``. The result is non-increasing in
  ``target``.

  Args:
    xs: the evaluations' steps or training seconds, strictly increasing.
    losses: the loss at each, same length; ``None`` is read as NaN.
    target: the loss to reach (``inf`` is reached at the first finite point).

  Returns:
    :math:`x^\star`, or ``None`` if no evaluation reaches the target.

  Raises:
    ValueError: lengths differ, ``xs`` is not strictly increasing, or
      ``target`` is NaN.
  """
  x, y = _curve(xs, losses)
  if math.isnan(target):
    raise ValueError("target is NaN: pass the loss to reach (a diverged baseline's final loss is inf, not NaN).")
  hits = np.flatnonzero(y <= target)  # NaN compares False: never reached
  if hits.size == 0:
    return None
  i = int(hits[0])
  if i == 0 or y[i] == target or not np.isfinite(y[i - 1]):
    return float(x[i])
  # y[i-1] > target >= y[i] here, so the fraction lies in (0, 1].
  return float(x[i - 1] + (y[i - 1] - target) / (y[i - 1] - y[i]) * (x[i] - x[i - 1]))


def _curve(xs: ArrayLike, losses: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
  """``xs`` and ``losses`` as float arrays (``None`` → NaN), checked."""
  x = np.asarray(xs, dtype=float).reshape(-1)
  y = np.asarray([math.nan if v is None else v for v in np.asarray(losses, dtype=object).reshape(-1)], dtype=float)
  if x.shape != y.shape:
    raise ValueError(f"xs and losses must have the same length, got {x.size} and {y.size}.")
  if np.any(np.diff(x) <= 0):
    raise ValueError(f"xs must be strictly increasing (steps or seconds of successive evaluations), got {x.tolist()}.")
  return x, y


def steps_to_target(
  history: Mapping[str, Sequence[Sequence[Any]]], target: float, *, time: bool = False
) -> float | None:
  """The step (or training second) at which a run's validation loss first reaches ``target``.

  :func:`first_reach` over ``history["val"]``: the validation loss against
  the step, or with ``time=True`` against the training seconds (compilation
  and evaluation excluded), so that optimizers whose steps cost different
  times compare by wall clock. The history ends at the run's horizon, so
  ``None`` means not reached within it.

  Args:
    history: a run's history (``history["val"]`` rows are
      ``[step, train_seconds, val_loss, ...]``).
    target: the loss to reach, typically the baseline's final validation loss.
    time: measure in training seconds instead of steps.

  Returns:
    The interpolated step or second, or ``None`` if never reached.
  """
  rows = history.get("val", [])
  column = 1 if time else 0
  return first_reach([r[column] for r in rows], [r[2] for r in rows], target)


class Speedup(NamedTuple):
  """An equivalent-data (or -time) speedup, or a bound on it.

  Attributes:
    ratio: the speedup; when ``bound`` is set, the bound's value instead.
    bound: ``""`` when interpolated within the measured baseline budgets;
      ``">"`` when the loss is better than every baseline run (the speedup
      exceeds ``ratio``, the longest budget over the optimizer's);
      ``"<"`` when it is worse than the shortest baseline run (the speedup is
      below ``ratio``, the shortest budget over the optimizer's).
  """

  ratio: float
  bound: str = ""

  def __str__(self) -> str:
    return format_speedup(self)


def equivalent_data_speedup(baseline_finals: Mapping[int, float], loss: float, horizon: int) -> Speedup:
  r"""How many times longer the baseline must train to reach ``loss``.

  Wen et al. (2025) measure an optimizer's speedup over AdamW as the data
  budget AdamW needs to reach the optimizer's final loss, over the
  optimizer's budget, from AdamW runs trained to several budgets (each with
  its own full schedule). With the baseline's final losses
  :math:`L(B_k)` at budgets :math:`B_1 < B_2 < \dots` (e.g. the horizon
  :math:`H`, :math:`2H`, :math:`4H`) and the optimizer's final ``loss``
  :math:`\ell` after ``horizon`` :math:`H`:

  .. math::

     B(\ell) = \exp\bigl(\text{first\_reach}(\log B_k,\; L(B_k),\; \ell)\bigr),
     \qquad \text{speedup} = B(\ell) / H,

  i.e. the baseline's final loss interpolated linearly in :math:`\log B`,
  read at its first crossing of :math:`\ell` (no fitted law: exact at the
  measured budgets). Loss is assumed to fall with the budget; where the
  measurements do not (a longer run that ended worse, from noise or an
  ill-tuned schedule), the first crossing is the smallest budget at which
  the measured baseline does as well, and later, worse runs do not count.
  Outside the measured range nothing is extrapolated: a loss below every
  baseline run gives the bound ``> B_max / H``, a loss above the shortest
  run's (or a non-finite one: a diverged run) ``< B_min / H``. Non-finite
  baseline losses (a diverged baseline run) are dropped; with none left the
  ratio is NaN.

  Args:
    baseline_finals: the baseline's budget in steps → its final validation
      loss at that budget (any order).
    loss: the optimizer's final validation loss.
    horizon: the optimizer's budget in steps.

  Returns:
    The :class:`Speedup`: ``Speedup(2**1.5, "")`` for ``loss`` 2.7 against
    ``{100: 3.0, 200: 2.8, 400: 2.6}`` at ``horizon`` 100; ``">"``/``"<"``
    bounds outside 2.6…3.0.

  Raises:
    ValueError: ``baseline_finals`` is empty, or a budget or ``horizon`` is
      not positive.
  """
  return _speedup(baseline_finals, loss, horizon)


def equivalent_time_speedup(baseline_finals: Mapping[float, float], loss: float, seconds: float) -> Speedup:
  """:func:`equivalent_data_speedup` in training seconds instead of steps.

  Args:
    baseline_finals: each baseline run's training seconds (compilation
      excluded) → its final validation loss.
    loss: the optimizer's final validation loss.
    seconds: the optimizer's training seconds.

  Returns:
    The :class:`Speedup` in wall clock: the baseline's interpolated seconds to
    ``loss`` over ``seconds``; bounds are the baseline's longest/shortest
    seconds over ``seconds``.
  """
  return _speedup(baseline_finals, loss, seconds)


def _speedup(baseline: Mapping[float, float], loss: float | None, budget: float) -> Speedup:
  """Both speedups: ``budget`` and the baseline's keys in the same unit."""
  if not baseline:
    raise ValueError("baseline_finals is empty: pass the baseline's final loss at one budget or more.")
  if budget <= 0 or any(b <= 0 for b in baseline):
    raise ValueError(f"budgets must be positive (log scale), got {sorted(baseline)} and {budget}.")
  pairs = sorted((float(b), float(v)) for b, v in baseline.items() if v is not None and math.isfinite(v))
  if not pairs:
    return Speedup(math.nan)
  budgets, finals = (np.asarray(column) for column in zip(*pairs))
  if loss is None or not loss <= finals[0]:  # None/NaN/inf (diverged) land here too
    return Speedup(float(budgets[0] / budget), "<")
  log_budget = first_reach(np.log(budgets), finals, loss)
  if log_budget is None:
    return Speedup(float(budgets[-1] / budget), ">")
  hit = np.flatnonzero(np.log(budgets) == log_budget)  # exact at a measured budget
  return Speedup(float(budgets[hit[0]] if hit.size else math.exp(log_budget)) / budget)


def format_speedup(speedup: Speedup, digits: int = 3) -> str:
  """``"2.83"``, ``">4"`` or ``"<1"``: the ratio to ``digits`` significant digits, after its bound."""
  return f"{speedup.bound}{speedup.ratio:.{digits}g}"


class Summary(NamedTuple):
  """A metric over seeds.

  Attributes:
    mean: the mean of the finite values (NaN if none).
    std: their sample standard deviation (ddof=1); 0 for one value, NaN for none.
    n: how many finite values.
    lo: lower end of the bootstrap interval of the mean, or ``None``.
    hi: upper end, or ``None``.
    missing: how many values were ``None`` or non-finite (never reached, diverged).
  """

  mean: float
  std: float
  n: int
  lo: float | None = None
  hi: float | None = None
  missing: int = 0


def summarize(
  values: Sequence[float | None], *, rng: np.random.Generator | None = None, reps: int = 2000, level: float = 0.95
) -> Summary:
  r"""Mean ± std of a metric over seeds, counting the values it cannot average.

  .. math::

     \bar v = \frac1n \sum_i v_i, \qquad s = \sqrt{\frac{1}{n-1}\sum_i (v_i - \bar v)^2}\ (n > 1),\ s = 0\ (n = 1),

  over the :math:`n` finite values; ``None``, ``inf`` and NaN (a run that
  never reached its target, or diverged) are counted in ``missing``, not
  averaged (an infinite mean would hide the seeds that did reach it).

  Args:
    values: one value per seed.
    rng: if given, ``lo``/``hi`` are :func:`bootstrap`'s interval of the mean.
    reps: bootstrap resamples.
    level: bootstrap interval coverage.

  Returns:
    The :class:`Summary`.
  """
  finite = [float(v) for v in values if v is not None and math.isfinite(v)]
  missing = len(values) - len(finite)
  if not finite:
    return Summary(math.nan, math.nan, 0, None, None, missing)
  std = float(np.std(finite, ddof=1)) if len(finite) > 1 else 0.0
  lo, hi = bootstrap(finite, rng=rng, reps=reps, level=level) if rng is not None else (None, None)
  return Summary(float(np.mean(finite)), std, len(finite), lo, hi, missing)


def bootstrap(
  values: Sequence[float], *, rng: np.random.Generator, reps: int = 2000, level: float = 0.95
) -> tuple[float, float]:
  r"""Percentile bootstrap interval of the mean (Efron 1979).

  Draws ``reps`` resamples of the values with replacement and returns the
  :math:`(1-\text{level})/2` and :math:`(1+\text{level})/2` quantiles of
  their means. Reproducible for a given ``rng`` state. With few seeds the
  interval is narrow and optimistic: it says how much the mean moves with
  the seeds at hand, not more.

  Args:
    values: finite values, one per seed.
    rng: the random generator (e.g. ``np.random.default_rng(0)``).
    reps: number of resamples, at least 1.
    level: coverage in (0, 1).

  Returns:
    ``(lo, hi)``; ``(v, v)`` for a single value.

  Raises:
    ValueError: no values, a non-finite value, or ``reps``/``level`` out of range.
  """
  v = np.asarray(values, dtype=float).reshape(-1)
  if v.size == 0:
    raise ValueError("bootstrap needs at least one value.")
  if not np.all(np.isfinite(v)):
    raise ValueError(f"bootstrap needs finite values (count the others apart, as summarize does), got {v.tolist()}.")
  if not 0 < level < 1:
    raise ValueError(f"level must be in (0, 1), got {level}.")
  if reps < 1:
    raise ValueError(f"reps must be at least 1, got {reps}.")
  means = v[rng.integers(0, v.size, size=(reps, v.size))].mean(axis=1)
  lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
  return float(lo), float(hi)


def format_value(x: Any, digits: int = 4) -> str:
  """A single value for a table: ``digits`` significant digits (3 past 1e5), ``—`` for none or non-finite."""
  if x is None or (isinstance(x, float) and not math.isfinite(x)):
    return "—"
  if isinstance(x, float):
    return f"{x:.{digits}g}" if abs(x) < 1e5 else f"{x:.3g}"
  return str(x)


def format_summary(summary: Summary, digits: int = 2, *, missing_label: str = "not reached") -> str:
  """A :class:`Summary` for a table: ``"1.23 ± 0.04"``.

  One value shows as ``"1.23 (n=1)"``; a bootstrap interval follows as
  ``" [1.19, 1.27]"``; missing values as ``"(1/4 not reached)"``; no value
  at all as ``"not reached (3/3)"``, and an empty summary as ``"—"``.

  Args:
    summary: from :func:`summarize`.
    digits: decimals.
    missing_label: what a missing value means (``"diverged"``, ...).

  Returns:
    The text.
  """
  total = summary.n + summary.missing
  if summary.n == 0:
    return f"{missing_label} ({summary.missing}/{total})" if summary.missing else "—"
  notes = [f"{summary.missing}/{total} {missing_label}"] if summary.missing else []
  return _center(summary, digits, notes)


def _center(summary: Summary, digits: int, notes: list[str]) -> str:
  """``mean ± std [lo, hi] (notes)`` of a summary with one value or more."""
  text = f"{summary.mean:.{digits}f}"
  if summary.n > 1:
    text += f" ± {summary.std:.{digits}f}"
  else:
    notes = ["n=1", *notes]
  if summary.lo is not None and summary.hi is not None:
    text += f" [{summary.lo:.{digits}f}, {summary.hi:.{digits}f}]"
  return f"{text} ({'; '.join(notes)})" if notes else text


class SpeedupSummary(NamedTuple):
  """Speedups over seeds.

  Attributes:
    summary: :func:`summarize` of the interpolated ratios (NaN ones — no
      finite baseline — in ``missing``).
    above: how many seeds had a ``">"`` bound.
    below: how many had a ``"<"`` bound.
    above_at: the smallest ``">"`` bound (true of every such seed), or ``None``.
    below_at: the largest ``"<"`` bound, or ``None``.
  """

  summary: Summary
  above: int
  below: int
  above_at: float | None
  below_at: float | None


def summarize_speedups(speedups: Sequence[Speedup], **kwargs: Any) -> SpeedupSummary:
  """:func:`summarize` of the interpolated speedups, with the bounded ones counted apart.

  A bound is not a value: averaging a ``>4`` as 4 would bias the mean, so
  seeds outside the measured range are counted by side with the weakest
  bound that holds for all of them (the time variant's bounds differ by seed).

  Args:
    speedups: one :class:`Speedup` per seed.
    **kwargs: passed to :func:`summarize` (``rng``, ``reps``, ``level``).

  Returns:
    The :class:`SpeedupSummary`.
  """
  above = [s.ratio for s in speedups if s.bound == ">"]
  below = [s.ratio for s in speedups if s.bound == "<"]
  summary = summarize([s.ratio for s in speedups if not s.bound], **kwargs)
  return SpeedupSummary(summary, len(above), len(below), min(above, default=None), max(below, default=None))


def speedups_to_json(speedups: SpeedupSummary) -> dict[str, Any]:
  """A :class:`SpeedupSummary` as plain data (its ``summary`` a mapping too), as ``results.json`` keeps it."""
  return {**speedups._asdict(), "summary": speedups.summary._asdict()}


def speedups_from_json(data: Mapping[str, Any]) -> SpeedupSummary:
  """The :class:`SpeedupSummary` that :func:`speedups_to_json` wrote."""
  return SpeedupSummary(**{**data, "summary": Summary(**data["summary"])})


def format_speedups(speedups: SpeedupSummary, digits: int = 2) -> str:
  """A :class:`SpeedupSummary` for a table.

  ``"2.50 ± 0.71 (1/3 >4)"`` with some seeds out of range, ``">6"`` when all
  are above it, ``"1/2 >5; 1/2 <0.5"`` with none within it, ``"—"`` with none.

  Args:
    speedups: from :func:`summarize_speedups`.
    digits: decimals of the mean and std (bounds show 3 significant digits).

  Returns:
    The text.
  """
  summary = speedups.summary
  total = summary.n + summary.missing + speedups.above + speedups.below
  if total == 0:
    return "—"
  notes = []
  if speedups.above:
    notes.append(f"{speedups.above}/{total} >{speedups.above_at:.3g}")
  if speedups.below:
    notes.append(f"{speedups.below}/{total} <{speedups.below_at:.3g}")
  if summary.missing:
    notes.append(f"{summary.missing}/{total} no baseline")
  if summary.n:
    return _center(summary, digits, notes)
  if speedups.above == total:
    return f">{speedups.above_at:.3g}"
  if speedups.below == total:
    return f"<{speedups.below_at:.3g}"
  if summary.missing == total:
    return f"no baseline ({total}/{total})"
  return "; ".join(notes)


def parabola_minimum(xs: ArrayLike, ys: ArrayLike) -> float | None:
  r"""Where the parabola through the lowest of ``ys`` and its two neighbours is lowest.

  For a loss-vs-log-learning-rate curve sampled on a grid this places the
  optimum between grid points (a grid a factor 2 apart resolves it to a
  fraction of that factor). With the lowest point at :math:`x_1` and its
  neighbours :math:`x_0 < x_1 < x_2`,

  .. math::

     x^* = x_1 - \frac12\,\frac{(x_1-x_0)^2 (y_1-y_2) - (x_1-x_2)^2 (y_1-y_0)}
                              {(x_1-x_0)(y_1-y_2) - (x_1-x_2)(y_1-y_0)},

  clipped to :math:`[x_0, x_2]`.

  Args:
    xs: strictly increasing positions (e.g. log2 learning rates).
    ys: values there; non-finite ones (diverged runs) count as higher than any finite one.

  Returns:
    :math:`x^*`; the lowest point itself when it is at an end (no bracket)
    or the three points are collinear; None when no value is finite.
  """
  x = np.asarray(xs, dtype=float)
  y = np.asarray(ys, dtype=float)
  if x.shape != y.shape or x.ndim != 1:
    raise ValueError(f"xs and ys must be 1-d of one length, got shapes {x.shape} and {y.shape}.")
  if np.any(np.diff(x) <= 0):
    raise ValueError(f"xs must be strictly increasing, got {x.tolist()}.")
  finite = np.isfinite(y)
  if not finite.any():
    return None
  i = int(np.argmin(np.where(finite, y, np.inf)))
  if i == 0 or i == len(x) - 1 or not (finite[i - 1] and finite[i + 1]):
    return float(x[i])
  (x0, x1, x2), (y0, y1, y2) = x[i - 1 : i + 2], y[i - 1 : i + 2]
  den = (x1 - x0) * (y1 - y2) - (x1 - x2) * (y1 - y0)
  if den == 0:
    return float(x1)
  num = (x1 - x0) ** 2 * (y1 - y2) - (x1 - x2) ** 2 * (y1 - y0)
  return float(np.clip(x1 - 0.5 * num / den, x0, x2))
