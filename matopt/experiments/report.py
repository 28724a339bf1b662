"""What a run leaves behind: results.json, results.md and loss plots."""

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

import jax
import numpy as np


def machine() -> dict[str, str]:
  """The machine a run was measured on, for tables that quote times."""
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
             loss_unit: str | None = None, metrics: Sequence[str] = ()) -> str:
  """The comparison table, best validation loss first.

  Args:
    records: :mod:`matopt.experiments.runner`'s records.
    config_name: the config's name (title).
    task: the task's name (title).
    unit: what throughput counts (``tokens``, ``examples``).
    info: :func:`machine`.
    loss_unit: what a loss is measured in (``nats/byte``), said under the table.
    metrics: the task's metric names (``Task.metric_names``), one column each
      for those some record has (``—`` where another has none, e.g. a diverged run).
  """
  extra = [k for k in metrics if any(k in r for r in records)]
  # The progress bar shows the last step's loss; the table the mean of the last 10 (train.train).
  head = ["optimizer", "learning rate", "train loss (mean of last 10 steps)", "final val loss", *extra,
          "steps", "wall s", f"{unit}/s"]
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
    grid = r["grid"]
    lr = _fmt(r["learning_rate"]) + (f" (best of {len(grid)})" if len(grid) > 1 else "")
    cells = [r["optimizer"], lr, _fmt(r["final_train_loss"]), _fmt(r["final_val_loss"]),
             *(_fmt(r.get(k)) for k in extra), str(r["steps"]), _fmt(r["wall_seconds"], 3),
             _fmt(r["throughput"], 3)]
    if r["diverged"]:
      cells[0] += " (diverged)"
    lines.append("| " + " | ".join(cells) + " |")
  losses = f"Losses are in {loss_unit}. " if loss_unit else ""
  lines += ["", (f"{losses}Wall seconds include compilation and evaluation; throughput counts training "
                 "steps only. Learning-rate grids: see results.json.")]
  return "\n".join(lines) + "\n"


def _smooth(y: np.ndarray, span: int) -> np.ndarray:
  if len(y) < 2 or span <= 1:
    return y
  alpha, out, acc = 2.0 / (span + 1), np.empty_like(y), y[0]
  for i, v in enumerate(y):
    acc = alpha * v + (1 - alpha) * acc
    out[i] = acc
  return out


class Curve(NamedTuple):
  """One optimizer's plotted run: the best learning rate of its grid."""

  name: str  # the config's run name (legend, colour)
  optimizer: str  # the catalogue's factory name (colour when ``name`` has none)
  learning_rate: float
  other_rates: Mapping[str, float]  # other learning rates the config set, e.g. adam_learning_rate
  history: Mapping[str, Any]  # train.train's history


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


def figures(curves: Sequence[Curve], *, title: str, loss_unit: str) -> dict[str, Any]:
  """Loss vs step and vs training seconds (matplotlib Figures, keyed ``step``
  and ``time``): the smoothed training loss (left) and the validation loss
  (right), a fixed colour per optimizer (:func:`colour`), its learning rates
  in both legends. The left y axis starts after the first 10% of training,
  where the curves separate."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  colours = _colours(curves)
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
    fig.suptitle(title)
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
