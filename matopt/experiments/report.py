"""What a run leaves behind: results.json, results.md and loss plots.

:func:`render` builds all three from an output directory alone (its
``config.json``, ``meta.json`` and the ``runs/**/result.json`` of finished
runs), without JAX: ``matopt run`` calls it when its runs are done, and
``matopt report DIR`` calls it again on a finished or partly finished
directory. Metrics over seeds and against the baseline come from
:mod:`matopt.experiments.metrics`.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from matopt.experiments import metrics as metrics_lib
from matopt.experiments import tuning


def machine() -> dict[str, str]:
  """The machine a run was measured on, for tables that quote times."""
  import jax  # here: rendering a finished directory needs no backend

  device = jax.devices()[0]
  return {
      "platform": platform.platform(),
      "processor": platform.processor() or platform.machine(),
      "cpus": str(os.cpu_count()),
      "device": f"{device.platform}:{getattr(device, 'device_kind', '?')} x{jax.device_count()}",
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
  path.write_text(json.dumps(_json_safe(data), indent=2) + "\n")


def _fmt(x: Any, digits: int = 4) -> str:
  if x is None or (isinstance(x, float) and not math.isfinite(x)):
    return "—"
  if isinstance(x, float):
    return f"{x:.{digits}g}" if abs(x) < 1e5 else f"{x:.3g}"
  return str(x)


def markdown(records: Sequence[dict], *, config_name: str, task: str, unit: str, info: dict,
             loss_unit: str | None = None, metrics: Sequence[str] = (),
             baseline: Mapping[str, Any] | None = None) -> str:
  """The comparison table, best validation loss first.

  With several seeds a cell is mean ± std over them (:func:`metrics.format_summary`);
  with one, the value as before.

  Args:
    records: :func:`collect`'s records.
    config_name: the config's name (title).
    task: the task's name (title).
    unit: what throughput counts (``tokens``, ``examples``).
    info: :func:`machine`.
    loss_unit: what a loss is measured in (``nats/byte``), said under the table.
    metrics: the task's metric names (``Task.metric_names``), one column each
      for those some record has (``—`` where another has none, e.g. a diverged run).
    baseline: :class:`Collected`'s ``baseline``: adds the steps and training
      seconds to the baseline's loss, and the speedups when it ran at several horizons.
  """
  extra = [k for k in metrics if any(k in r for r in records)]
  multi = any(r.get("n_seeds", 1) > 1 for r in records)
  # The progress bar shows the last step's loss; the table the mean of the last 10 (train.train).
  tuned = any("tuned" in r for r in records)
  head = ["optimizer", "learning rate", *(["tuned"] if tuned else []), "train loss (mean of last 10 steps)",
          "final val loss", *extra,
          "steps", "wall s", f"{unit}/s", *_baseline_head(baseline)]
  rows = sorted(records, key=lambda r: (r["final_val_loss"] is None, r["final_val_loss"] or 0.0))
  lines = [
      f"# Results: {config_name} ({task})",
      "",
      (f"{info['date']} · {info['device']} · {info['processor']} ({info['cpus']} CPUs) · "
       f"jax {info['jax']} · Python {info['python']}"),
      "",
      "| " + " | ".join(head) + " |",
      "|" + "---|" * len(head),
  ]
  for r in rows:
    cells = [r["optimizer"], _lr_cell(r), *([_tuned_cell(r)] if tuned else []), _cell(r, "final_train_loss", 3, multi),
             _cell(r, "final_val_loss", 3, multi),
             *(_cell(r, k, 3, multi) for k in extra), str(r["steps"]), _cell(r, "wall_seconds", 1, multi, 3),
             _cell(r, "throughput", 0, multi, 3), *_baseline_cells(r, baseline, multi)]
    if r["diverged"]:
      cells[0] += " (diverged)" if not multi else f" (diverged: {r['diverged_seeds']}/{r['n_seeds']} seeds)"
    lines.append("| " + " | ".join(cells) + " |")
  losses = f"Losses are in {loss_unit}. " if loss_unit else ""
  lines += ["", (f"{losses}Wall seconds include compilation and evaluation; throughput counts training "
                 "steps only. Learning-rate grids: see results.json.")]
  lines += _notes(records, baseline, multi)
  return "\n".join(lines) + "\n"


def _lr_cell(r: Mapping[str, Any]) -> str:
  """The chosen learning rate; of how many grid points; how often the grid was extended; at an edge."""
  grid, extension = r["grid"], r.get("tuning")
  notes = [f"best of {len(grid)}"] if len(grid) > 1 else []
  if extension and extension["extended"]:
    notes.append(f"grid extended by {len(extension['extended'])}")
  if extension and extension["at_edge"]:
    notes.append("best at the edge of the grid")
  return _fmt(r["learning_rate"]) + (f" ({', '.join(notes)})" if notes else "")


def _tuned_cell(r: Mapping[str, Any]) -> str:
  """The chosen values of the options tuned besides the learning rate."""
  tuned = r.get("tuned") or {}
  return ", ".join(f"{k.removeprefix('schedule.')}={_fmt(v) if isinstance(v, float) else v}"
                   for k, v in tuned.items()) or "—"


def _cell(r: Mapping[str, Any], key: str, decimals: int, multi: bool, digits: int = 4,
          missing: str = "—") -> str:
  """Mean ± std over seeds with ``decimals``, or with one seed the value to ``digits`` significant digits."""
  summary = r.get("summaries", {}).get(key)
  if multi and summary is not None:
    label = "diverged" if key.startswith("final_") or key in ("val_perplexity", "val_bits_per_byte") else "not reached"
    return metrics_lib.format_summary(metrics_lib.Summary(**summary), decimals, missing_label=label)
  value = r.get(key)
  return missing if value is None else _fmt(value, digits)


def _baseline_head(baseline: Mapping[str, Any] | None) -> list[str]:
  if baseline is None:
    return []
  name = baseline["name"]
  head = [f"steps to {name}'s loss", f"train s to {name}'s loss"]
  return head + ([f"data speedup vs {name}", f"time speedup vs {name}"] if len(baseline["factors"]) > 1 else [])


def _baseline_cells(r: Mapping[str, Any], baseline: Mapping[str, Any] | None, multi: bool) -> list[str]:
  if baseline is None:
    return []
  cells = [_cell(r, "steps_to_target", 0, multi, missing="not reached"),
           _cell(r, "seconds_to_target", 2, multi, 3, missing="not reached")]
  if len(baseline["factors"]) > 1:
    cells += [_speedup_cell(r, key, multi) for key in ("data_speedup", "time_speedup")]
  return cells


def _speedup_cell(r: Mapping[str, Any], key: str, multi: bool) -> str:
  """:func:`metrics.format_speedups` over seeds, or one seed's :func:`metrics.format_speedup`."""
  if not multi:
    speedup = r["runs"][0].get(key)
    return metrics_lib.format_speedup(metrics_lib.Speedup(**speedup)) if speedup else "—"
  s = r["summaries"].get(key)
  if s is None:
    return "—"
  summary = metrics_lib.SpeedupSummary(**{**s, "summary": metrics_lib.Summary(**s["summary"])})
  return metrics_lib.format_speedups(summary)


def _notes(records: Sequence[dict], baseline: Mapping[str, Any] | None, multi: bool) -> list[str]:
  """What the seeds and baseline columns mean, under the table."""
  notes = []
  edge = [r["optimizer"] for r in records if (r.get("tuning") or {}).get("at_edge")]
  if edge:
    notes.append(f"Best at the edge of the grid ({', '.join(edge)}): the best learning rate is still the smallest "
                 "or largest tried after extending the grid as far as its extend allows; the optimum may lie "
                 "beyond (raise extend).")
  if any((r.get("tuning") or {}).get("extended") for r in records):
    notes.append("Grid extended: learning rates added one ratio past the edge where the best lay, at the best "
                 "point's other values, until the best lay inside or extend ran out (see results.json's tuning).")
  if multi:
    seeds = sorted({s for r in records for s in r["seeds"]})
    notes.append(f"Each cell is the mean ± sample std over seeds {seeds} (n={len(seeds)} unless noted); "
                 "each optimizer's learning rate is its grid's best by mean final val loss; plot bands "
                 "span the lowest to the highest seed.")
  if baseline is not None:
    name, steps = baseline["name"], baseline["steps"]
    notes.append(f"Steps and train s to {name}'s loss: where the val loss first reaches {name}'s mean final "
                 f"val loss {baseline['target']:.4g}, interpolated linearly between evaluations "
                 f"(not reached: not within {steps} steps).")
    if len(baseline["factors"]) > 1:
      factors = ", ".join(f"{f}×" for f in baseline["factors"])
      notes.append(f"Data speedup: the steps {name} needs to reach an optimizer's final val loss, over the "
                   f"optimizer's {steps}, seed by seed, from {name} trained to {factors} the steps (each run's "
                   "schedule stretched to its own length; interpolated in log steps, > and < are bounds "
                   "outside the measured range; Wen et al. 2025). Time speedup: the same in training seconds.")
  return ["", *notes] if notes else []


def _smooth(y: np.ndarray, span: int) -> np.ndarray:
  if len(y) < 2 or span <= 1:
    return y
  alpha, out, acc = 2.0 / (span + 1), np.empty_like(y), y[0]
  for i, v in enumerate(y):
    acc = alpha * v + (1 - alpha) * acc
    out[i] = acc
  return out


class Curve(NamedTuple):
  """One optimizer's plotted run: the best learning rate of its grid, over its seeds."""

  name: str  # the config's run name (legend, colour)
  optimizer: str  # the catalogue's factory name (colour when ``name`` has none)
  learning_rate: float
  other_rates: Mapping[str, float]  # other learning rates the config set, e.g. adam_learning_rate
  history: Mapping[str, Any]  # train.train's history; over several seeds their mean (``collect``)
  histories: Sequence[Mapping[str, Any]] = ()  # each seed's history: a min–max band when more than one


# One fixed colour per catalogue optimizer, the same in every plot whatever
# else is drawn (matplotlib's tab10, black, magenta, ColorBrewer Dark2's teal and gold).
# Optimizers whose curves tend to overlap get far-apart hues: Muon red,
# unconstrained Scion blue, Scion green, SOAP orange, Shampoo purple; every
# pair differs by CIELAB ΔE > 25 (tests/experiments/test_report_plots.py).
COLOURS: dict[str, str] = {
    "adamw": "#000000", "adam": "#7f7f7f", "sgd": "#17becf",
    "muon": "#d62728", "muon_clip": "#ff00ff", "normuon": "#1b9e77", "adamuon": "#e6ab02",
    "scion": "#2ca02c", "unconstrained_scion": "#1f77b4",
    "shampoo": "#9467bd", "soap": "#ff7f0e",
    "signum": "#8c564b", "nsgd": "#e377c2", "clipped_sgd": "#bcbd22",
}
_SPARE = ("#000080", "#808000", "#008080", "#800000", "#ff69b4", "#4b0082", "#a0522d", "#00ced1")


def colour(name: str) -> str:
  """The fixed colour of an optimizer name; other names get a stable one by hash."""
  if name in COLOURS:
    return COLOURS[name]
  palette = [*COLOURS.values(), *_SPARE]
  return palette[zlib.crc32(name.encode()) % len(palette)]


def _colours(curves: Sequence[Curve]) -> list[str]:
  """A distinct colour per curve: its name's, else its optimizer's, else a stable
  free one; names with a fixed colour keep it even when drawn after others."""
  palette = [*COLOURS.values(), *_SPARE]
  taken = {c.name: COLOURS[c.name] for c in curves if c.name in COLOURS}
  out = []
  for c in curves:
    if c.name in taken:
      out.append(taken[c.name])
      continue
    used = set(taken.values()) | set(out)
    wish = [COLOURS.get(c.optimizer), colour(c.name)]
    start = zlib.crc32(c.name.encode()) % len(palette)
    free = [w for w in wish + palette[start:] + palette[:start] if w and w not in used]
    out.append(free[0] if free else colour(c.name))
  return out


def _legend_label(curve: Curve) -> str:
  rates = [f"lr {curve.learning_rate:g}"]
  rates += [f"{k.removesuffix('_learning_rate')} lr {v:g}" for k, v in curve.other_rates.items()]
  return f"{curve.name} ({', '.join(rates)})"


def _band(ax: Any, curve: Curve, key: str, index: int, colour_: str, *, smooth: int) -> None:
  """Shade between the lowest and highest seed (each smoothed as the mean curve is)
  over the rows every seed has, at the mean curve's steps or seconds."""
  rows = [_rows(h, key) for h in curve.histories]
  n = min(len(r) for r in rows)
  x = _rows(curve.history, key)[:n, index]
  ys = np.stack([_smooth(r[:n, 2], smooth) for r in rows])
  ok = np.all(np.isfinite(ys), axis=0)
  if ok.any():
    ax.fill_between(x[ok], ys.min(axis=0)[ok], ys.max(axis=0)[ok], color=colour_, alpha=0.2, lw=0)


def figures(curves: Sequence[Curve], *, title: str, loss_unit: str) -> dict[str, Any]:
  """Loss vs step and vs training seconds (matplotlib Figures, keyed ``step``
  and ``time``): the smoothed training loss (left) and the validation loss
  (right), a fixed colour per optimizer (:func:`colour`), its learning rates
  in both legends. The left y axis starts after the first 10% of training,
  where the curves separate. Over several seeds a curve is their mean
  (training seconds averaged too) in a shaded band from the lowest to the
  highest seed (min–max, not ±std: with 2 or 3 seeds that is every seed)."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  colours = _colours(curves)
  banded = any(len(c.histories) > 1 for c in curves)
  out = {}
  for axis, index, label in (("step", 0, "step"), ("time", 1, "training seconds")):
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.6), dpi=100)
    tops, bottoms = [], []
    for curve, colour_ in zip(curves, colours):
      name, history = _legend_label(curve), curve.history
      train = np.asarray(history["train"], dtype=float).reshape(-1, 3)
      train = train[np.isfinite(train[:, 2])]
      if len(train):
        smooth = _smooth(train[:, 2], 20)
        left.plot(train[:, index], smooth, color=colour_, lw=1.2, label=name)
        tops.append(smooth[len(smooth) // 10])
        bottoms.append(smooth.min())
      val = np.asarray([v[:3] for v in history["val"] if v[2] is not None and math.isfinite(v[2])],
                       dtype=float).reshape(-1, 3)
      if len(val):
        right.plot(val[:, index], val[:, 2], "o-", color=colour_, ms=3, lw=1.2, label=name)
      if len(curve.histories) > 1:
        _band(left, curve, "train", index, colour_, smooth=20)
        _band(right, curve, "val", index, colour_, smooth=1)
    if tops and max(tops) > min(bottoms):
      low, high = min(bottoms), max(tops)
      left.set_ylim(low - 0.05 * (high - low), high)
    for ax, what in ((left, "training loss (EMA over 20 steps)"), (right, "validation loss")):
      ax.set_xlabel(label)
      ax.set_ylabel(f"loss ({loss_unit})")
      ax.set_title(what, fontsize=10)
      ax.grid(alpha=0.3)
      if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    fig.suptitle(title + (" (mean over seeds; band: lowest to highest seed)" if banded else ""))
    fig.tight_layout()
    out[axis] = fig
  return out


def plots(curves: Sequence[Curve], out_dir: Path, *, title: str, loss_unit: str) -> list[Path]:
  """:func:`figures` written to ``out_dir/loss_vs_step.png`` and ``loss_vs_time.png``."""
  import matplotlib.pyplot as plt

  paths = []
  for axis, fig in figures(curves, title=title, loss_unit=loss_unit).items():
    path = out_dir / f"loss_vs_{axis}.png"
    fig.savefig(path)
    plt.close(fig)
    paths.append(path)
  return paths


# Reading an output directory back: records and curves from the runs' result.json files.


def run_path(name: str, lr: float, seed: int, steps: int | None = None,
             tuned: Sequence[tuple[str, Any]] = ()) -> Path:
  """A run's directory, relative to the output directory: ``runs/NAME/lr_X/seed_S``,
  and ``runs/NAME/lr_X/seed_S/steps_N`` for a baseline run trained to another
  horizon of ``N`` steps. Other tuned options name the point after the
  learning rate: ``runs/NAME/lr_X-b2_0.95-warmup_steps_10/seed_S``."""
  point = f"lr_{lr:.6g}" + "".join(f"-{k.removeprefix('schedule.')}_{_value_name(v)}" for k, v in tuned)
  path = Path("runs") / name / point / f"seed_{seed}"
  return path / f"steps_{steps}" if steps is not None else path


def _value_name(value: Any) -> str:
  return f"{value:.6g}" if isinstance(value, float) else str(value)


def _read(path: Path) -> Any:
  return json.loads(path.read_text())


class _Spec(NamedTuple):
  """An ``optimizers:`` entry as ``config.json`` holds it."""

  name: str
  factory: str
  grid: tuning.Grid
  options: dict[str, Any]


def _specs(config: Mapping[str, Any]) -> list[_Spec]:
  return [_Spec(e["name"], e["optimizer"], tuning.of_entry(e),
                {k: v for k, v in e.items() if k not in ("name", "optimizer", "learning_rate", "tune")})
          for e in config["optimizers"]]


def seeds_of(config: Mapping[str, Any]) -> list[int]:
  """The seeds of a config as ``config.json`` holds it: ``seeds``, else ``[seed]``."""
  return list(config.get("seeds") or [config["seed"]])


def baseline_of(config: Mapping[str, Any]) -> str | None:
  """The baseline's name: ``baseline``, else ``adamw`` if an entry has that name, else None."""
  names = [e["name"] for e in config["optimizers"]]
  return config.get("baseline") or ("adamw" if "adamw" in names else None)


def finished_runs(out: Path, name: str, lr: float, seeds: Sequence[int], steps: int | None = None,
                  tuned: Sequence[tuple[str, Any]] = ()) -> dict[int, dict]:
  """Seed → result of each run of ``(name, lr, tuned)`` that finished (has its result.json)."""
  found = {}
  for seed in seeds:
    path = out / run_path(name, lr, seed, steps, tuned) / "result.json"
    if path.exists():
      found[seed] = _read(path)
  return found


_NOT_SUMMED = ("seed", "result", "steps", "diverged")


def _per_seed(result: Mapping[str, Any], seed: int, path: Path) -> dict[str, Any]:
  """One seed's row in a record: its final numbers, metrics, and where its curves are."""
  row = {"seed": seed, "result": (path / "result.json").as_posix()}
  row.update({k: result.get(k) for k in ("final_train_loss", "final_val_loss", "steps", "wall_seconds",
                                          "train_seconds", "compile_seconds", "diverged")})
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
  point["diverged"] = any(r["diverged"] for r in runs.values())
  point["seeds"] = sorted(runs)
  return point


def _record(spec: _Spec, outcome: tuning.Outcome, config: Mapping[str, Any], meta: Mapping[str, Any]) -> dict[str, Any]:
  """One optimizer's record: its best point's numbers as mean and std over seeds."""
  best, lr = outcome.best, outcome.best.learning_rate
  rows = [_per_seed(r, seed, run_path(spec.name, lr, seed, tuned=best.tuned))
          for seed, r in sorted(outcome.runs[best].items())]
  keys = list(dict.fromkeys(k for row in rows for k in row if k not in _NOT_SUMMED))
  summaries = {k: metrics_lib.summarize([row.get(k) for row in rows]) for k in keys}
  record: dict[str, Any] = {"optimizer": spec.name, "factory": spec.factory, "learning_rate": lr}
  shown = ["final_train_loss", "final_val_loss", *(k for k in meta["metric_names"] if k in summaries and summaries[k].n)]
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
  record["hyperparameters"] = {"learning_rate": best.learning_rate, **spec.options, **best.options(),
                               "schedule": schedule}
  if spec.grid.tune:
    record["tuned"] = dict(best.tuned)
  record["grid"] = [_grid_point(point, runs) for point, runs in outcome.runs.items()]
  if spec.grid.extend:
    record["tuning"] = {"learning_rates": tuning.line(outcome.runs, best), "extend": spec.grid.extend,
                        "extended": list(outcome.extended), "at_edge": outcome.at_edge}


def _speedup_summary(speedups: Sequence[metrics_lib.Speedup]) -> dict[str, Any]:
  summary = metrics_lib.summarize_speedups(speedups)
  return {**summary._asdict(), "summary": summary.summary._asdict()}


def _add_targets(record: dict[str, Any], runs: Mapping[int, Mapping[str, Any]], target: float) -> None:
  """Steps and training seconds to ``target`` per seed (None: not reached), and their summaries."""
  for row in record["runs"]:
    history = runs[row["seed"]]["history"]
    row["steps_to_target"] = metrics_lib.steps_to_target(history, target)
    row["seconds_to_target"] = metrics_lib.steps_to_target(history, target, time=True)
  for key in ("steps_to_target", "seconds_to_target"):
    _put(record, key, metrics_lib.summarize([row[key] for row in record["runs"]]))


def _baseline_finals(horizons: Mapping[int, Mapping[int, Mapping[str, Any]]],
                     seed: int) -> tuple[dict[int, float | None], dict[float, float | None]]:
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
    summary = metrics_lib.summarize([None if key == "final_val_loss" and r["diverged"] else r[key]
                                     for r in runs.values()])
    _put(entry, key, summary)
  entry["runs"] = [{"seed": seed, "result": (run_path(name, lr, seed, steps, point.tuned) / "result.json").as_posix(),
                    **{k: r[k] for k in ("final_val_loss", "train_seconds", "diverged")}}
                   for seed, r in sorted(runs.items())]
  return entry


def _add_baseline(records: list[dict], chosen: Mapping[str, Mapping[int, dict]], config: Mapping[str, Any],
                  out: Path) -> dict[str, Any] | None:
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
    horizons.update({f * steps: finished_runs(out, name, point.learning_rate, seeds_of(config), f * steps,
                                              point.tuned) for f in factors if f != 1})
  for record in records:
    record["baseline"] = name
    record["target_val_loss"] = target
    _add_targets(record, chosen[record["optimizer"]], target)
    if len(factors) > 1:
      _add_speedups(record, horizons, steps)
  return {"name": name, "target": target, "factors": factors, "steps": steps}


def _rows(history: Mapping[str, Any], key: str) -> np.ndarray:
  """``history[key]``'s first three columns as floats (None → NaN)."""
  rows = [[math.nan if v is None else v for v in row[:3]] for row in history[key]]
  return np.asarray(rows, dtype=float).reshape(-1, 3)


def _mean_history(histories: Sequence[Mapping[str, Any]]) -> dict[str, list]:
  """The seeds' mean curve, row by row over the rows every seed has (a diverged seed ends early)."""
  out = {}
  for key in ("train", "val"):
    rows = [_rows(h, key) for h in histories]
    n = min(len(r) for r in rows)
    out[key] = np.mean([r[:n] for r in rows], axis=0).reshape(-1, 3).tolist()
  return out


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
  final validation loss over its finished seeds (:func:`grid_key`), its grid
  extended past an edge as ``matopt run`` extended it (:func:`tuning.search`
  over the finished runs: the same runs give the same choice, with no training).
  """
  out = Path(out)
  config, meta = _read(out / "config.json"), _read(out / "meta.json")
  records, curves, chosen = [], [], {}
  for spec in _specs(config):
    outcome = search(out, config, spec.name)
    if outcome is None:
      continue
    chosen[spec.name] = outcome.runs[outcome.best]
    records.append(_record(spec, outcome, config, meta))
    histories = [r["history"] for _, r in sorted(chosen[spec.name].items())]
    rates = meta["optimizers"].get(spec.name, {}).get("rates", {})
    curves.append(Curve(spec.name, spec.factory, outcome.best.learning_rate, rates, _mean_history(histories),
                        tuple(histories)))
  return Collected(records, curves, _add_baseline(records, chosen, config, out))


def render(out: str | Path) -> list[dict]:
  """Write ``results.json``, ``results.md`` and the plots of ``out`` from its runs (:func:`collect`).

  Returns:
    The records as ``results.json`` holds them (null for inf and NaN).
  """
  out = Path(out)
  config, meta = _read(out / "config.json"), _read(out / "meta.json")
  collected = collect(out)
  write_json(out / "results.json", collected.records)
  (out / "results.md").write_text(markdown(
      collected.records, config_name=config["name"], task=config["task"], unit=meta["unit"],
      loss_unit=meta["loss_unit"], info=meta["machine"], metrics=meta["metric_names"],
      baseline=collected.baseline))
  plots(collected.curves, out, title=f"{config['name']}: {config['task']}", loss_unit=meta["loss_unit"])
  return _read(out / "results.json")
