"""Per-step metrics of a run as JSON lines, for pandas and other tools.

``run_dir/metrics.jsonl`` holds one JSON object per line: a training step
``{"step", "seconds", "train_loss"}`` (plus the largest value of each update
argument the step reported, such as ``max_logit``) and an evaluation
``{"step", "seconds", "val_loss", "val_aux"}``; ``seconds`` is training time
so far. Lines are appended as the run goes, so the file can be watched; a
resumed run first rewrites it from its checkpoint's history, so it never
holds steps the checkpoint does not. Non-finite numbers are written as
``null`` (strict JSON). ``pandas.read_json(path, lines=True)`` loads it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

FILE = "metrics.jsonl"


def _finite(x: Any) -> Any:
  if isinstance(x, float) and not math.isfinite(x):
    return None
  if isinstance(x, Mapping):
    return {k: _finite(v) for k, v in x.items()}
  return x


class MetricsLog:
  """Appends a run's new history rows to ``path`` as JSON lines.

  Args:
    path: the file (``run_dir / FILE``).
    peak_keys: history keys of per-step update-argument peaks (``max_logit``).
  """

  def __init__(self, path: Path, peak_keys: Sequence[str] = ()):
    self.path = Path(path)
    self.peak_keys = tuple(peak_keys)
    self.written = dict.fromkeys(("train", "val", *self.peak_keys), 0)

  def _lines(
    self, history: Mapping[str, list], split: str, start: int, peaks: Mapping[str, Mapping[int, float]]
  ) -> Iterable[str]:
    rows = history.get(split, [])[start:]
    for row in rows:
      if split == "train":
        record = {"step": row[0], "seconds": row[1], "train_loss": row[2]}
        record.update({key: values[row[0]] for key, values in peaks.items() if row[0] in values})
      else:
        record = {"step": row[0], "seconds": row[1], "val_loss": row[2], "val_aux": row[3] if len(row) > 3 else None}
      yield json.dumps(_finite(record)) + "\n"

  def reset(self, history: Mapping[str, list]) -> None:
    """Rewrite the file from ``history`` (a fresh run's is empty)."""
    self.written = dict.fromkeys(("train", "val", *self.peak_keys), 0)
    self.path.parent.mkdir(parents=True, exist_ok=True)
    self.path.write_text("")
    self.flush(history)

  def flush(self, history: Mapping[str, list]) -> None:
    """Append the rows of ``history`` not yet written, training steps before evaluations."""
    # Only the peak rows not yet written (each step appends its own with its
    # training row): a whole-history lookup every step would grow with the run.
    peaks = {key: {row[0]: row[1] for row in history.get(key, [])[self.written[key] :]} for key in self.peak_keys}
    lines = []
    for split in ("train", "val"):
      lines.extend(self._lines(history, split, self.written[split], peaks))
    for split in self.written:
      self.written[split] = len(history.get(split, []))
    if lines:
      with self.path.open("a") as f:
        f.writelines(lines)
