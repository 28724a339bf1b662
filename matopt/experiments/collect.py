"""What an output directory's finished runs add up to, read back without JAX.

:func:`collect` reads an output directory's ``config.json``, ``meta.json`` and
the ``runs/**/result.json`` of its finished runs (laid out by
:func:`run_path`), redoes each optimizer's grid search over them
(:func:`search`, :func:`matopt.experiments.tuning.search`), and returns one
record per optimizer (its best point's numbers per seed and as mean and std
over seeds, its grid, its steps, seconds and speedups against the baseline)
and one :class:`Curve` per optimizer (its seeds' mean history).
:mod:`matopt.experiments.report` renders them; :mod:`matopt.experiments.runner`
writes the files read here (:func:`write_json`, :func:`machine`) and reuses
finished runs (:func:`finished_runs`).
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from matopt.experiments import metrics as metrics_lib
from matopt.experiments import tuning


def machine() -> dict[str, str]:
  """The machine a run was measured on, for tables that quote times."""
  import jax  # here: collecting or rendering a finished directory needs no backend

  device = jax.devices()[0]
  return {
    "platform": platform.platform(),
    "processor": platform.processor() or platform.machine(),
    "cpus": str(os.cpu_count()),
    "device": f"{device.platform}:{getattr(device, 'device_kind', '?')} x{jax.device_count()}"
    + (f" in {jax.process_count()} processes" if jax.process_count() > 1 else ""),
    "jax": jax.__version__,
    "python": platform.python_version(),
    "date": datetime.date.today().isoformat(),
  }


def _json_safe(x: Any) -> Any:
  """JSON has no inf/nan: write them as null."""
  if isinstance(x, float) and not math.isfinite(x):
    return None
  if isinstance(x, dict):
    return {k: _json_safe(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_json_safe(v) for v in x]
  return x


def write_json(path: Path, data: Any) -> None:
  """``data`` as indented JSON, inf and NaN as null (:func:`read_json` reads it back)."""
  path.write_text(json.dumps(_json_safe(data), indent=2) + "\n")


def run_path(name: str, lr: float, seed: int, steps: int | None = None, tuned: Sequence[tuple[str, Any]] = ()) -> Path:
  """A run's directory, relative to the output directory: ``runs/NAME/lr_X/seed_S``,
  and ``runs/NAME/lr_X/seed_S/steps_N`` for a baseline run trained to another
  horizon of ``N`` steps. Other tuned options name the point after the
  learning rate: ``runs/NAME/lr_X-b2_0.95-warmup_steps_10/seed_S``."""
  point = f"lr_{lr:.6g}" + "".join(f"-{k.removeprefix('schedule.')}_{_value_name(v)}" for k, v in tuned)
  path = Path("runs") / name / point / f"seed_{seed}"
  return path / f"steps_{steps}" if steps is not None else path


def _value_name(value: Any) -> str:
  return f"{value:.6g}" if isinstance(value, float) else str(value)


def read_json(path: Path) -> Any:
  """A JSON file written by :func:`write_json` (null where it wrote inf or NaN)."""
  return json.loads(path.read_text())


class _Spec(NamedTuple):
  """An ``optimizers:`` entry as ``config.json`` holds it."""

  name: str
  factory: str
  grid: tuning.Grid
  options: dict[str, Any]


def _specs(config: Mapping[str, Any]) -> list[_Spec]:
  return [
    _Spec(
      e["name"],
      e["optimizer"],
      tuning.of_entry(e),
      {k: v for k, v in e.items() if k not in ("name", "optimizer", "learning_rate", "tune")},
    )
    for e in config["optimizers"]
  ]


def seeds_of(config: Mapping[str, Any]) -> list[int]:
  """The seeds of a config as ``config.json`` holds it: ``seeds``, else ``[seed]``."""
  return list(config.get("seeds") or [config["seed"]])


def baseline_of(config: Mapping[str, Any]) -> str | None:
  """The baseline's name: ``baseline``, else ``adamw`` if an entry has that name, else None."""
  names = [e["name"] for e in config["optimizers"]]
  return config.get("baseline") or ("adamw" if "adamw" in names else None)


def finished_runs(
  out: Path, name: str, lr: float, seeds: Sequence[int], steps: int | None = None, tuned: Sequence[tuple[str, Any]] = ()
) -> dict[int, dict]:
  """Seed → result of each run of ``(name, lr, tuned)`` that finished (has its result.json)."""
  found = {}
  for seed in seeds:
    path = out / run_path(name, lr, seed, steps, tuned) / "result.json"
    if path.exists():
      found[seed] = read_json(path)
  return found


_NOT_SUMMED = ("seed", "result", "steps", "diverged")


def _per_seed(result: Mapping[str, Any], seed: int, path: Path) -> dict[str, Any]:
  """One seed's row in a record: its final numbers, metrics, and where its curves are."""
  row = {"seed": seed, "result": (path / "result.json").as_posix()}
  row.update(
    {
      k: result.get(k)
      for k in (
        "final_train_loss",
        "final_val_loss",
        "steps",
        "wall_seconds",
        "train_seconds",
        "compile_seconds",
        "diverged",
      )
    }
  )
  row["throughput"] = result.get("units_per_second")
  row.update(result.get("metrics") or {})
  # What the optimizer's update arguments peaked at (final_max_logit for QK-clip).
  row.update({k: v for k, v in result.items() if k.startswith("final_") and k not in row and k != "final_val_aux"})
  return row


def _put(record: dict[str, Any], key: str, summary: metrics_lib.Summary) -> None:
  """``record[key]`` the mean (None when no seed has a value), ``key_std`` and the whole summary."""
  record[key] = summary.mean if summary.n else None
  record[f"{key}_std"] = summary.std if summary.n else None
  record.setdefault("summaries", {})[key] = summary._asdict()


def _grid_point(at: tuning.Point, runs: Mapping[int, Mapping[str, Any]]) -> dict[str, Any]:
  point: dict[str, Any] = {"learning_rate": at.learning_rate, **dict(at.tuned)}
  for key in ("final_val_loss", "final_train_loss"):
    summary = metrics_lib.summarize([None if r["diverged"] else r[key] for r in runs.values()])
    point[key] = summary.mean if summary.n else None
    point[f"{key}_std"] = summary.std if summary.n else None  # error bars of learning-rate curves (trends.py)
  point["diverged"] = any(r["diverged"] for r in runs.values())
  point["seeds"] = sorted(runs)
  return point


def _record(spec: _Spec, outcome: tuning.Outcome, config: Mapping[str, Any], meta: Mapping[str, Any]) -> dict[str, Any]:
  """One optimizer's record: its best point's numbers as mean and std over seeds."""
  best, lr = outcome.best, outcome.best.learning_rate
  rows = [
    _per_seed(r, seed, run_path(spec.name, lr, seed, tuned=best.tuned))
    for seed, r in sorted(outcome.runs[best].items())
  ]
  keys = list(dict.fromkeys(k for row in rows for k in row if k not in _NOT_SUMMED))
  summaries = {k: metrics_lib.summarize([row.get(k) for row in rows]) for k in keys}
  record: dict[str, Any] = {"optimizer": spec.name, "factory": spec.factory, "learning_rate": lr}
  shown = [
    "final_train_loss",
    "final_val_loss",
    *(k for k in meta["metric_names"] if k in summaries and summaries[k].n),
  ]
  for key in shown:
    _put(record, key, summaries[key])
  record["steps"] = max(row["steps"] for row in rows)
  for key in ("wall_seconds", "train_seconds", "compile_seconds", "throughput"):
    _put(record, key, summaries[key])
  record["throughput_unit"] = f"{meta['unit']}/s"
  record["diverged"] = any(row["diverged"] for row in rows)
  record["diverged_seeds"] = sum(bool(row["diverged"]) for row in rows)
  for key in keys:
    if key not in record:
      _put(record, key, summaries[key])
  _add_tuning(record, spec, outcome, config)
  record["seeds"] = [row["seed"] for row in rows]
  record["n_seeds"] = len(rows)
  record["runs"] = rows
  return record


def _add_tuning(record: dict[str, Any], spec: _Spec, outcome: tuning.Outcome, config: Mapping[str, Any]) -> None:
  """The chosen hyperparameters, every grid point tried and, when asked for, the grid's extension."""
  best = outcome.best
  schedule = dict(config["schedule"])
  if best.warmup_steps() is not None:
    schedule["warmup_steps"] = best.warmup_steps()
  record["hyperparameters"] = {
    "learning_rate": best.learning_rate,
    **spec.options,
    **best.options(),
    "schedule": schedule,
  }
  if spec.grid.tune:
    record["tuned"] = dict(best.tuned)
  record["grid"] = [_grid_point(point, runs) for point, runs in outcome.runs.items()]
  if spec.grid.extend:
    record["tuning"] = {
      "learning_rates": tuning.line(outcome.runs, best),
      "extend": spec.grid.extend,
      "extended": list(outcome.extended),
      "at_edge": outcome.at_edge,
    }


def _speedup_summary(speedups: Sequence[metrics_lib.Speedup]) -> dict[str, Any]:
  return metrics_lib.speedups_to_json(metrics_lib.summarize_speedups(speedups))


def _add_targets(record: dict[str, Any], runs: Mapping[int, Mapping[str, Any]], target: float) -> None:
  """Steps and training seconds to ``target`` per seed (None: not reached), and their summaries."""
  for row in record["runs"]:
    history = runs[row["seed"]]["history"]
    row["steps_to_target"] = metrics_lib.steps_to_target(history, target)
    row["seconds_to_target"] = metrics_lib.steps_to_target(history, target, time=True)
  for key in ("steps_to_target", "seconds_to_target"):
    _put(record, key, metrics_lib.summarize([row[key] for row in record["runs"]]))


def _baseline_finals(
  horizons: Mapping[int, Mapping[int, Mapping[str, Any]]], seed: int
) -> tuple[dict[int, float | None], dict[float, float | None]]:
  """The baseline's final validation loss by steps and by training seconds, for one seed."""
  by_steps, by_seconds = {}, {}
  for steps, runs in horizons.items():
    result = runs.get(seed)
    if result is not None:
      loss = None if result["diverged"] else result["final_val_loss"]
      by_steps[steps] = loss
      if result["train_seconds"] > 0:
        by_seconds[result["train_seconds"]] = loss
  return by_steps, by_seconds


def _add_speedups(record: dict[str, Any], horizons: Mapping[int, Mapping[int, Mapping[str, Any]]], steps: int) -> None:
  """Equivalent-data and -time speedups over the baseline, per seed (paired by seed) and summarised."""
  data, time = [], []
  for row in record["runs"]:
    by_steps, by_seconds = _baseline_finals(horizons, row["seed"])
    loss = None if row["diverged"] else row["final_val_loss"]
    row["data_speedup"] = row["time_speedup"] = None
    if by_steps:
      data.append(metrics_lib.equivalent_data_speedup(by_steps, loss, steps))
      row["data_speedup"] = data[-1]._asdict()
    if by_seconds and row["train_seconds"]:
      time.append(metrics_lib.equivalent_time_speedup(by_seconds, loss, row["train_seconds"]))
      row["time_speedup"] = time[-1]._asdict()
  for key, values in (("data_speedup", data), ("time_speedup", time)):
    summary = _speedup_summary(values)
    record[key] = summary["summary"]["mean"] if summary["summary"]["n"] else None
    record[f"{key}_std"] = summary["summary"]["std"] if summary["summary"]["n"] else None
    record["summaries"][key] = summary


def _horizon_entry(out: Path, name: str, point: tuning.Point, seeds: Sequence[int], steps: int) -> dict[str, Any]:
  lr = point.learning_rate
  runs = finished_runs(out, name, lr, seeds, steps, point.tuned)
  entry: dict[str, Any] = {"steps": steps}
  for key in ("final_val_loss", "train_seconds"):
    summary = metrics_lib.summarize(
      [None if key == "final_val_loss" and r["diverged"] else r[key] for r in runs.values()]
    )
    _put(entry, key, summary)
  entry["runs"] = [
    {
      "seed": seed,
      "result": (run_path(name, lr, seed, steps, point.tuned) / "result.json").as_posix(),
      **{k: r[k] for k in ("final_val_loss", "train_seconds", "diverged")},
    }
    for seed, r in sorted(runs.items())
  ]
  return entry


def _add_baseline(
  records: list[dict], chosen: Mapping[str, Mapping[int, dict]], config: Mapping[str, Any], out: Path
) -> dict[str, Any] | None:
  """Metrics against the baseline in every record; what the table says of the baseline, or None."""
  name = baseline_of(config)
  base = next((r for r in records if r["optimizer"] == name), None)
  if base is None or base["final_val_loss"] is None:
    return None
  target, steps = base["final_val_loss"], config["steps"]
  factors = sorted(config.get("speedup_horizons") or [1])
  horizons = {steps: chosen[name]}
  if len(factors) > 1:
    point = tuning.Point(base["learning_rate"], tuple(base.get("tuned", {}).items()))
    entries = [_horizon_entry(out, name, point, seeds_of(config), f * steps) for f in factors if f != 1]
    base["horizons"] = entries
    horizons.update(
      {
        f * steps: finished_runs(out, name, point.learning_rate, seeds_of(config), f * steps, point.tuned)
        for f in factors
        if f != 1
      }
    )
  for record in records:
    record["baseline"] = name
    record["target_val_loss"] = target
    _add_targets(record, chosen[record["optimizer"]], target)
    if len(factors) > 1:
      _add_speedups(record, horizons, steps)
  return {"name": name, "target": target, "factors": factors, "steps": steps}


def history_rows(history: Mapping[str, Any], key: str) -> np.ndarray:
  """``history[key]``'s first three columns as floats (None → NaN); the plots' seed bands read them too."""
  rows = [[math.nan if v is None else v for v in row[:3]] for row in history[key]]
  return np.asarray(rows, dtype=float).reshape(-1, 3)


def _mean_history(histories: Sequence[Mapping[str, Any]]) -> dict[str, list]:
  """The seeds' mean curve, row by row over the rows every seed has (a diverged seed ends early)."""
  out = {}
  for key in ("train", "val"):
    rows = [history_rows(h, key) for h in histories]
    n = min(len(r) for r in rows)
    out[key] = np.mean([r[:n] for r in rows], axis=0).reshape(-1, 3).tolist()
  return out


class Curve(NamedTuple):
  """One optimizer's plotted run: the best learning rate of its grid, over its seeds."""

  name: str  # the config's run name (legend, colour)
  optimizer: str  # the catalogue's factory name (colour when ``name`` has none)
  learning_rate: float
  other_rates: Mapping[str, float]  # other learning rates the config set, e.g. adam_learning_rate
  history: Mapping[str, Any]  # train.train's history; over several seeds their mean (``collect``)
  histories: Sequence[Mapping[str, Any]] = ()  # each seed's history: a min–max band when more than one


class Collected(NamedTuple):
  """What an output directory's finished runs add up to (:func:`collect`)."""

  records: list[dict]  # one per optimizer with a finished run, in the config's order
  curves: list[Curve]
  baseline: dict[str, Any] | None  # name, target loss, horizon factors, steps; None: no speedup columns


def search(out: Path, config: Mapping[str, Any], name: str) -> tuning.Outcome | None:
  """The grid of entry ``name`` over the runs finished in ``out`` (:func:`tuning.search`); None: none finished."""
  spec = next(s for s in _specs(config) if s.name == name)
  seeds = seeds_of(config)
  return tuning.search(spec.grid, lambda p: finished_runs(out, name, p.learning_rate, seeds, tuned=p.tuned))


def collect(out: str | Path) -> Collected:
  """Records and curves from ``out``'s ``config.json``, ``meta.json`` and finished runs.

  Grid points with no finished seed are left out, and optimizers with no
  finished point; each optimizer's point is the one with the lowest mean
  final validation loss over its finished seeds (:func:`tuning.grid_key`), its grid
  extended past an edge as ``matopt run`` extended it (:func:`tuning.search`
  over the finished runs: the same runs give the same choice, with no training).
  """
  out = Path(out)
  config, meta = read_json(out / "config.json"), read_json(out / "meta.json")
  records, curves, chosen = [], [], {}
  for spec in _specs(config):
    outcome = search(out, config, spec.name)
    if outcome is None:
      continue
    chosen[spec.name] = outcome.runs[outcome.best]
    records.append(_record(spec, outcome, config, meta))
    histories = [r["history"] for _, r in sorted(chosen[spec.name].items())]
    rates = meta["optimizers"].get(spec.name, {}).get("rates", {})
    curves.append(
      Curve(spec.name, spec.factory, outcome.best.learning_rate, rates, _mean_history(histories), tuple(histories))
    )
  return Collected(records, curves, _add_baseline(records, chosen, config, out))
