"""What a run leaves behind: results.json, results.md and loss plots."""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

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


def markdown(records: Sequence[dict], *, config_name: str, task: str, unit: str, info: dict) -> str:
  """The comparison table, best validation loss first."""
  extra = [k for k in ("val_perplexity", "val_bits_per_byte", "val_accuracy") if any(k in r for r in records)]
  head = ["optimizer", "learning rate", "final train loss", "final val loss", *extra,
          "steps", "wall s", f"{unit}/s"]
  rows = sorted(records, key=lambda r: (r["final_val_loss"] is None, r["final_val_loss"] or 0.0))
  lines = [
      f"# Results: {config_name} ({task})",
      "",
      f"{info['date']} · {info['device']} · {info['processor']} ({info['cpus']} CPUs) · "
      f"jax {info['jax']} · Python {info['python']}",
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
  lines += ["", "Wall seconds include compilation and evaluation; throughput counts training "
            "steps only. Learning-rate grids: see results.json."]
  return "\n".join(lines) + "\n"


def _smooth(y: np.ndarray, span: int) -> np.ndarray:
  if len(y) < 2 or span <= 1:
    return y
  alpha, out, acc = 2.0 / (span + 1), np.empty_like(y), y[0]
  for i, v in enumerate(y):
    acc = alpha * v + (1 - alpha) * acc
    out[i] = acc
  return out


def plots(runs: Sequence[tuple[str, dict]], out_dir: Path, *, title: str) -> list[Path]:
  """Loss vs step and vs training seconds, one colour per optimizer: the
  smoothed training loss (left) and the validation loss (right). The y axis
  starts after the first 10% of training, where the curves separate."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  paths = []
  for axis, index, label in (("step", 0, "step"), ("time", 1, "training seconds")):
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.2), dpi=100)
    tops, bottoms = [], []
    for i, (name, history) in enumerate(runs):
      colour = f"C{i % 10}"
      train = np.asarray(history["train"], dtype=float).reshape(-1, 3)
      train = train[np.isfinite(train[:, 2])]
      if len(train):
        smooth = _smooth(train[:, 2], 20)
        left.plot(train[:, index], smooth, color=colour, lw=1.2, label=name)
        tops.append(smooth[len(smooth) // 10])
        bottoms.append(smooth.min())
      val = np.asarray([v[:3] for v in history["val"] if v[2] is not None and math.isfinite(v[2])],
                       dtype=float).reshape(-1, 3)
      if len(val):
        right.plot(val[:, index], val[:, 2], "o-", color=colour, ms=3, lw=1.2, label=name)
    if tops and max(tops) > min(bottoms):
      low, high = min(bottoms), max(tops)
      left.set_ylim(low - 0.05 * (high - low), high)
    for ax, what in ((left, "training loss (EMA over 20 steps)"), (right, "validation loss")):
      ax.set_xlabel(label)
      ax.set_title(what, fontsize=10)
      ax.grid(alpha=0.3)
    if right.get_legend_handles_labels()[0]:
      right.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    path = out_dir / f"loss_vs_{axis}.png"
    fig.savefig(path)
    plt.close(fig)
    paths.append(path)
  return paths
