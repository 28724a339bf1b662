"""Hyperparameter grids of an optimizer entry, tuned at the horizon that is reported.

An entry's grid is the cartesian product of its learning rates and of the
values of the options it tunes (``tune: {b2: [0.95, 0.99]}``). Each point is
trained with every seed and ranked by its mean final validation loss (a
diverged seed counts as inf, :func:`grid_key`). With ``extend: N`` the
learning-rate grid is geometric and grows: while the best point's learning
rate is the smallest or largest tried (at the best point's other values), the
next rate beyond that edge is trained, at most ``N`` times. When the bound is
reached with the best still at an edge, the result says so (``at_edge``).

:func:`search` is the one procedure: ``matopt run`` calls it with a function
that trains a point (reusing finished runs), ``matopt report`` with one that
only reads finished runs, so both derive the same grid and the same choice
from the same runs, and a report never trains. This module needs no JAX.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import numpy as np

# Tunable besides the optimizer's own options; the schedule's warmup multiplies every learning rate.
WARMUP = "schedule.warmup_steps"


class Point(NamedTuple):
  """One point of a grid: a learning rate and the values of the other tuned options."""

  learning_rate: float
  tuned: tuple[tuple[str, Any], ...] = ()  # (option, value) in the entry's ``tune`` order

  def options(self) -> dict[str, Any]:
    """The tuned optimizer options (without the schedule's)."""
    return {k: v for k, v in self.tuned if k != WARMUP}

  def warmup_steps(self) -> int | None:
    return dict(self.tuned).get(WARMUP)


class Grid(NamedTuple):
  """What an entry tunes: ``learning_rate`` (a list, or ``{grid, extend, factor}``) and ``tune``."""

  learning_rates: tuple[float, ...]
  tune: tuple[tuple[str, tuple[Any, ...]], ...] = ()
  extend: int = 0  # at most this many learning rates added beyond an edge
  factor: float | None = None  # None: the grid's own ratio

  def points(self) -> list[Point]:
    """The starting grid: every learning rate with every combination of the tuned values."""
    keys = [k for k, _ in self.tune]
    combos = itertools.product(*(values for _, values in self.tune))
    tuned = [tuple(zip(keys, combo)) for combo in combos]
    return [Point(lr, t) for lr in self.learning_rates for t in tuned]

  def ratio(self) -> float:
    """The step between neighbouring learning rates when extending: ``factor``, else the grid's own
    (its mean ratio between sorted neighbours)."""
    if self.factor is not None:
      return self.factor
    lrs = sorted(self.learning_rates)
    return (lrs[-1] / lrs[0]) ** (1 / (len(lrs) - 1))

  def next_rate(self, lr: float, up: bool) -> float:
    """The rate one step past ``lr``, to 6 significant digits as its directory names it (``collect.run_path``).

    A half-decade grid (0.003, 0.01, 0.03: ones and threes, no factor given)
    continues along 1, 3, 10, 30, ..., so its points stay round numbers.
    """
    k, mantissa = _decade(lr)
    if self.factor is None and {_decade(r)[1] for r in self.learning_rates} == {1, 3} and mantissa in (1, 3):
      nxt = (3 * 10**k if mantissa == 1 else 10 ** (k + 1)) if up else (3 * 10 ** (k - 1) if mantissa == 1 else 10**k)
    else:
      nxt = lr * self.ratio() if up else lr / self.ratio()
    return float(f"{nxt:.6g}")


def _decade(lr: float) -> tuple[int, float]:
  """``(k, m)`` with ``lr = m · 10**k``, ``1 <= m < 10``; ``m`` rounded to 6 significant digits."""
  k = math.floor(math.log10(lr) + 1e-9)
  return k, float(f"{lr / 10**k:.6g}")


def of_entry(entry: Mapping[str, Any]) -> Grid:
  """The grid of an ``optimizers:`` entry as ``config.json`` holds it (:func:`config.to_dict`)."""
  lr = entry["learning_rate"]
  tune = tuple((k, tuple(v)) for k, v in (entry.get("tune") or {}).items())
  if isinstance(lr, Mapping):
    return Grid(tuple(lr["grid"]), tune, lr.get("extend", 0), lr.get("factor"))
  return Grid(tuple(lr), tune)


def is_geometric(rates: tuple[float, ...]) -> bool:
  """Two or more distinct rates with about one ratio between sorted neighbours
  (within 15%, so that half-decade grids such as 0.003, 0.01, 0.03 count)."""
  lrs = sorted(rates)
  if len(lrs) < 2 or lrs[0] == lrs[1]:
    return False
  ratios = [b / a for a, b in itertools.pairwise(lrs)]
  return all(math.isclose(r, ratios[0], rel_tol=0.15) for r in ratios)


def _loss_key(result: Mapping[str, Any]) -> float:
  loss = result["final_val_loss"]
  return math.inf if loss is None or result["diverged"] else loss


def grid_key(runs: Mapping[int, Mapping[str, Any]]) -> float:
  """What ranks a point: the mean final validation loss over its seeds, inf if one diverged."""
  return float(np.mean([_loss_key(r) for r in runs.values()])) if runs else math.inf


class Outcome(NamedTuple):
  """What :func:`search` found: every point with finished runs, and the best."""

  runs: dict[Point, dict[int, dict]]  # point → seed → result, starting grid first, then extensions
  best: Point
  extended: tuple[float, ...]  # learning rates added beyond an edge, in order
  at_edge: bool  # the best learning rate is the smallest or largest tried (extension asked for, bound reached)


def line(runs: Mapping[Point, Any], best: Point) -> list[float]:
  """The learning rates tried at the best point's other values, ascending."""
  return sorted(p.learning_rate for p in runs if p.tuned == best.tuned)


def _beyond(grid: Grid, runs: Mapping[Point, Any], best: Point) -> Point | None:
  """The next point past the edge the best lies on, or None when it lies inside."""
  rates = line(runs, best)
  if best.learning_rate == rates[-1]:
    return Point(grid.next_rate(rates[-1], up=True), best.tuned)
  if best.learning_rate == rates[0]:
    return Point(grid.next_rate(rates[0], up=False), best.tuned)
  return None


def search(grid: Grid, fetch: Callable[[Point], Mapping[int, dict]]) -> Outcome | None:
  """Rank the grid's points and extend the learning rates past an edge, up to ``grid.extend`` times.

  Args:
    grid: the entry's grid.
    fetch: a point's finished runs (seed → result; empty when none). ``matopt
      run`` trains the point first; a report only reads.

  Returns:
    The outcome, or None when no point has a finished run.
  """
  runs = {p: dict(r) for p in grid.points() if (r := fetch(p))}
  if not runs:
    return None
  extended: list[float] = []
  while True:
    best = min(runs, key=lambda p: grid_key(runs[p]))
    nxt = _beyond(grid, runs, best) if grid.extend else None
    if nxt is None or len(extended) == grid.extend or nxt in runs:
      break
    found = fetch(nxt)
    if not found:
      break  # not trained (yet): a report of an interrupted run
    runs[nxt] = dict(found)
    extended.append(nxt.learning_rate)
  rates = line(runs, best)
  at_edge = bool(grid.extend) and len(rates) > 1 and best.learning_rate in (rates[0], rates[-1])
  return Outcome(runs, best, tuple(extended), at_edge)
