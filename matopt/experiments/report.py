"""What a run leaves behind: results.json, results.md and loss plots.

:func:`render` builds all three from an output directory alone (its
``config.json``, ``meta.json`` and the ``runs/**/result.json`` of finished
runs), without JAX: ``matopt run`` calls it when its runs are done, and
``matopt report DIR`` calls it again on a finished or partly finished
directory. What the runs add up to (records, curves, the baseline's
target and speedups) comes from :mod:`matopt.experiments.collect`; this
module renders it: the table, its notes and the plots.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from matopt.experiments import collect as collect_lib
from matopt.experiments import metrics as metrics_lib


def markdown(
  records: Sequence[dict],
  *,
  config_name: str,
  task: str,
  unit: str,
  info: dict,
  loss_unit: str | None = None,
  metrics: Sequence[str] = (),
  baseline: Mapping[str, Any] | None = None,
) -> str:
  """The comparison table, best validation loss first.

  With several seeds a cell is mean ± std over them (:func:`metrics.format_summary`);
  with one, the value as before.

  Args:
    records: :func:`collect.collect`'s records.
    config_name: the config's name (title).
    task: the task's name (title).
    unit: what throughput counts (``tokens``, ``examples``).
    info: :func:`collect.machine`.
    loss_unit: what a loss is measured in (``nats/byte``), said under the table.
    metrics: the task's metric names (``Task.metric_names``), one column each
      for those some record has (``—`` where another has none, e.g. a diverged run).
    baseline: :class:`collect.Collected`'s ``baseline``: adds the steps and training
      seconds to the baseline's loss, and the speedups when it ran at several horizons.
  """
  extra = [k for k in metrics if any(k in r for r in records)]
  multi = any(r.get("n_seeds", 1) > 1 for r in records)
  # The progress bar shows the last step's loss; the table the mean of the last 10 (train.train).
  tuned = any("tuned" in r for r in records)
  head = [
    "optimizer",
    "learning rate",
    *(["tuned"] if tuned else []),
    "train loss (mean of last 10 steps)",
    "final val loss",
    *extra,
    "steps",
    "wall s",
    f"{unit}/s",
    *_baseline_head(baseline),
  ]
  rows = sorted(records, key=lambda r: (r["final_val_loss"] is None, r["final_val_loss"] or 0.0))
  lines = [
    f"# Results: {config_name} ({task})",
    "",
    (
      f"{info['date']} · {info['device']} · {info['processor']} ({info['cpus']} CPUs) · "
      f"jax {info['jax']} · Python {info['python']}"
    ),
    "",
    "| " + " | ".join(head) + " |",
    "|" + "---|" * len(head),
  ]
  for r in rows:
    cells = [
      r["optimizer"],
      _lr_cell(r),
      *([_tuned_cell(r)] if tuned else []),
      cell(r, "final_train_loss", 3, multi),
      cell(r, "final_val_loss", 3, multi),
      *(cell(r, k, 3, multi) for k in extra),
      str(r["steps"]),
      cell(r, "wall_seconds", 1, multi, 3),
      cell(r, "throughput", 0, multi, 3),
      *_baseline_cells(r, baseline, multi),
    ]
    if r["diverged"]:
      cells[0] += " (diverged)" if not multi else f" (diverged: {r['diverged_seeds']}/{r['n_seeds']} seeds)"
    lines.append("| " + " | ".join(cells) + " |")
  losses = f"Losses are in {loss_unit}. " if loss_unit else ""
  lines += [
    "",
    (
      f"{losses}Wall seconds include compilation and evaluation; throughput counts training "
      "steps only. Learning-rate grids: see results.json."
    ),
  ]
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
  return metrics_lib.format_value(r["learning_rate"]) + (f" ({', '.join(notes)})" if notes else "")


def _tuned_cell(r: Mapping[str, Any]) -> str:
  """The chosen values of the options tuned besides the learning rate."""
  tuned = r.get("tuned") or {}
  return (
    ", ".join(
      f"{k.removeprefix('schedule.')}={metrics_lib.format_value(v) if isinstance(v, float) else v}"
      for k, v in tuned.items()
    )
    or "—"
  )


def cell(r: Mapping[str, Any], key: str, decimals: int, multi: bool, digits: int = 4, missing: str = "—") -> str:
  """Mean ± std over seeds with ``decimals``, or with one seed the value to ``digits`` significant digits."""
  summary = r.get("summaries", {}).get(key)
  if multi and summary is not None:
    label = "diverged" if key.startswith("final_") or key in ("val_perplexity", "val_bits_per_byte") else "not reached"
    return metrics_lib.format_summary(metrics_lib.Summary(**summary), decimals, missing_label=label)
  value = r.get(key)
  return missing if value is None else metrics_lib.format_value(value, digits)


def _baseline_head(baseline: Mapping[str, Any] | None) -> list[str]:
  if baseline is None:
    return []
  name = baseline["name"]
  head = [f"steps to {name}'s loss", f"train s to {name}'s loss"]
  return head + ([f"data speedup vs {name}", f"time speedup vs {name}"] if len(baseline["factors"]) > 1 else [])


def _baseline_cells(r: Mapping[str, Any], baseline: Mapping[str, Any] | None, multi: bool) -> list[str]:
  if baseline is None:
    return []
  cells = [
    cell(r, "steps_to_target", 0, multi, missing="not reached"),
    cell(r, "seconds_to_target", 2, multi, 3, missing="not reached"),
  ]
  if len(baseline["factors"]) > 1:
    cells += [speedup_cell(r, key, multi) for key in ("data_speedup", "time_speedup")]
  return cells


def speedup_cell(r: Mapping[str, Any], key: str, multi: bool) -> str:
  """:func:`metrics.format_speedups` over seeds, or one seed's :func:`metrics.format_speedup`."""
  if not multi:
    speedup = r["runs"][0].get(key)
    return metrics_lib.format_speedup(metrics_lib.Speedup(**speedup)) if speedup else "—"
  s = r["summaries"].get(key)
  if s is None:
    return "—"
  return metrics_lib.format_speedups(metrics_lib.speedups_from_json(s))


def _notes(records: Sequence[dict], baseline: Mapping[str, Any] | None, multi: bool) -> list[str]:
  """What the seeds and baseline columns mean, under the table."""
  notes = []
  edge = [r["optimizer"] for r in records if (r.get("tuning") or {}).get("at_edge")]
  if edge:
    notes.append(
      f"Best at the edge of the grid ({', '.join(edge)}): the best learning rate is still the smallest "
      "or largest tried after extending the grid as far as its extend allows; the optimum may lie "
      "beyond (raise extend)."
    )
  if any((r.get("tuning") or {}).get("extended") for r in records):
    notes.append(
      "Grid extended: learning rates added one ratio past the edge where the best lay, at the best "
      "point's other values, until the best lay inside or extend ran out (see results.json's tuning)."
    )
  if multi:
    seeds = sorted({s for r in records for s in r["seeds"]})
    notes.append(
      f"Each cell is the mean ± sample std over seeds {seeds} (n={len(seeds)} unless noted); "
      "each optimizer's learning rate is its grid's best by mean final val loss; plot bands "
      "span the lowest to the highest seed."
    )
  if baseline is not None:
    name, steps = baseline["name"], baseline["steps"]
    notes.append(
      f"Steps and train s to {name}'s loss: where the val loss first reaches {name}'s mean final "
      f"val loss {baseline['target']:.4g}, interpolated linearly between evaluations "
      f"(not reached: not within {steps} steps)."
    )
    if len(baseline["factors"]) > 1:
      factors = ", ".join(f"{f}×" for f in baseline["factors"])
      notes.append(
        f"Data speedup: the steps {name} needs to reach an optimizer's final val loss, over the "
        f"optimizer's {steps}, seed by seed, from {name} trained to {factors} the steps (each run's "
        "schedule stretched to its own length; interpolated in log steps, > and < are bounds "
        "outside the measured range; Wen et al. 2025). Time speedup: the same in training seconds."
      )
  return ["", *notes] if notes else []


def _smooth(y: np.ndarray, span: int) -> np.ndarray:
  if len(y) < 2 or span <= 1:
    return y
  alpha, out, acc = 2.0 / (span + 1), np.empty_like(y), y[0]
  for i, v in enumerate(y):
    acc = alpha * v + (1 - alpha) * acc
    out[i] = acc
  return out


# One fixed colour per catalogue optimizer, the same in every plot whatever
# else is drawn (matplotlib's tab10, black, magenta, ColorBrewer Dark2's teal and gold).
# Optimizers whose curves tend to overlap get far-apart hues: Muon red,
# unconstrained Scion blue, Scion green, SOAP orange, Shampoo purple; every
# pair differs by CIELAB ΔE > 25 (tests/experiments/test_report_plots.py).
COLOURS: dict[str, str] = {
  "adamw": "#000000",
  "adam": "#7f7f7f",
  "sgd": "#17becf",
  "muon": "#d62728",
  "muon_clip": "#ff00ff",
  "normuon": "#1b9e77",
  "adamuon": "#e6ab02",
  "scion": "#2ca02c",
  "unconstrained_scion": "#1f77b4",
  "shampoo": "#9467bd",
  "soap": "#ff7f0e",
  "shampoo_gn": "#3f007d",
  "soap_gn": "#ffbb78",
  "signum": "#8c564b",
  "nsgd": "#e377c2",
  "clipped_sgd": "#bcbd22",
}
_SPARE = ("#000080", "#808000", "#008080", "#800000", "#ff69b4", "#4b0082", "#a0522d", "#00ced1")


def colour(name: str) -> str:
  """The fixed colour of an optimizer name; other names get a stable one by hash."""
  if name in COLOURS:
    return COLOURS[name]
  palette = [*COLOURS.values(), *_SPARE]
  return palette[zlib.crc32(name.encode()) % len(palette)]


def _colours(curves: Sequence[collect_lib.Curve]) -> list[str]:
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


def _legend_label(curve: collect_lib.Curve) -> str:
  rates = [f"lr {curve.learning_rate:g}"]
  rates += [f"{k.removesuffix('_learning_rate')} lr {v:g}" for k, v in curve.other_rates.items()]
  return f"{curve.name} ({', '.join(rates)})"


def _band(ax: Any, curve: collect_lib.Curve, key: str, index: int, colour_: str, *, smooth: int) -> None:
  """Shade between the lowest and highest seed (each smoothed as the mean curve is)
  over the rows every seed has, at the mean curve's steps or seconds."""
  rows = [collect_lib.history_rows(h, key) for h in curve.histories]
  n = min(len(r) for r in rows)
  x = collect_lib.history_rows(curve.history, key)[:n, index]
  ys = np.stack([_smooth(r[:n, 2], smooth) for r in rows])
  ok = np.all(np.isfinite(ys), axis=0)
  if ok.any():
    ax.fill_between(x[ok], ys.min(axis=0)[ok], ys.max(axis=0)[ok], color=colour_, alpha=0.2, lw=0)


def figures(curves: Sequence[collect_lib.Curve], *, title: str, loss_unit: str) -> dict[str, Any]:
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
      val = np.asarray(
        [v[:3] for v in history["val"] if v[2] is not None and math.isfinite(v[2])], dtype=float
      ).reshape(-1, 3)
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


def plots(curves: Sequence[collect_lib.Curve], out_dir: Path, *, title: str, loss_unit: str) -> list[Path]:
  """:func:`figures` written to ``out_dir/loss_vs_step.png`` and ``loss_vs_time.png``."""
  import matplotlib.pyplot as plt

  paths = []
  for axis, fig in figures(curves, title=title, loss_unit=loss_unit).items():
    path = out_dir / f"loss_vs_{axis}.png"
    fig.savefig(path)
    plt.close(fig)
    paths.append(path)
  return paths


def render(out: str | Path) -> list[dict]:
  """Write ``results.json``, ``results.md`` and the plots of ``out`` from its runs (:func:`collect.collect`).

  Returns:
    The records as ``results.json`` holds them (null for inf and NaN).
  """
  out = Path(out)
  config, meta = collect_lib.read_json(out / "config.json"), collect_lib.read_json(out / "meta.json")
  collected = collect_lib.collect(out)
  collect_lib.write_json(out / "results.json", collected.records)
  (out / "results.md").write_text(
    markdown(
      collected.records,
      config_name=config["name"],
      task=config["task"],
      unit=meta["unit"],
      loss_unit=meta["loss_unit"],
      info=meta["machine"],
      metrics=meta["metric_names"],
      baseline=collected.baseline,
    )
  )
  plots(collected.curves, out, title=f"{config['name']}: {config['task']}", loss_unit=meta["loss_unit"])
  return collect_lib.read_json(out / "results.json")
