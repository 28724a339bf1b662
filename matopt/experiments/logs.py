"""Per-step metrics of a run as JSON lines, for pandas and other tools.

``run_dir/metrics.jsonl`` holds one JSON object per line: a training step
``{"step", "seconds", "train_loss"}`` (plus the largest value of each update
argument the step reported, such as ``max_logit``) and an evaluation
``{"step", "seconds", "val_loss", "val_aux"}``; ``seconds`` is training time
so far. Lines are appended as the run goes, so the file can be watched; a
resumed run first rewrites it from its checkpoint's history, so it never
holds steps the checkpoint does not. Non-finite numbers are written as
``null`` (strict JSON). ``pandas.read_json(path, lines=True)`` loads it.

The same scalars go to TensorBoard event files in ``run_dir/tensorboard/``
(tags ``train/loss``, ``val/loss``, ``val/aux``, ``train/<peak>``), written
with tensorboardX when it is installed (the ``[experiments]`` extra installs
it): ``tensorboard --logdir runs/NAME`` shows every run of a study. An event's
wall time is the run's training seconds, so TensorBoard's *Relative* axis is
training time, as in the plots. A resume rewrites them from the checkpoint too.
"""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

FILE = "metrics.jsonl"
TENSORBOARD = "tensorboard"
# TensorBoard tags of the history's scalars; an update-argument peak is train/<key>.
_TAGS = {"train_loss": "train/loss", "val_loss": "val/loss", "val_aux": "val/aux"}


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
    tensorboard: also write TensorBoard event files into
      ``path.parent / TENSORBOARD``; ``None`` does when tensorboardX is installed.
  """

  def __init__(self, path: Path, peak_keys: Sequence[str] = (), *, tensorboard: bool | None = None):
    self.path = Path(path)
    self.peak_keys = tuple(peak_keys)
    self.written = dict.fromkeys(("train", "val", *self.peak_keys), 0)
    if tensorboard is None:
      tensorboard = importlib.util.find_spec("tensorboardX") is not None
    self.tensorboard = tensorboard
    self._writer = None

  def _records(
    self, history: Mapping[str, list], split: str, start: int, peaks: Mapping[str, Mapping[int, float]]
  ) -> Iterable[dict[str, Any]]:
    rows = history.get(split, [])[start:]
    for row in rows:
      if split == "train":
        record = {"step": row[0], "seconds": row[1], "train_loss": row[2]}
        record.update({key: values[row[0]] for key, values in peaks.items() if row[0] in values})
      else:
        record = {"step": row[0], "seconds": row[1], "val_loss": row[2], "val_aux": row[3] if len(row) > 3 else None}
      yield record

  def reset(self, history: Mapping[str, list]) -> None:
    """Rewrite the file (and the event files) from ``history`` (a fresh run's is empty)."""
    self.written = dict.fromkeys(("train", "val", *self.peak_keys), 0)
    self.path.parent.mkdir(parents=True, exist_ok=True)
    self.path.write_text("")
    if self.tensorboard:
      from tensorboardX import SummaryWriter

      self.close()
      events = self.path.parent / TENSORBOARD
      shutil.rmtree(events, ignore_errors=True)  # steps past the checkpoint are trained again
      self._writer = SummaryWriter(str(events), flush_secs=30)
    self.flush(history)

  def _scalars(self, record: Mapping[str, Any]) -> None:
    step, seconds = record["step"], record["seconds"]
    for key, value in record.items():
      if key in ("step", "seconds"):
        continue
      tag = _TAGS.get(key, f"train/{key}")
      values = {f"{tag}/{k}": v for k, v in value.items()} if isinstance(value, Mapping) else {tag: value}
      for name, x in values.items():
        if isinstance(x, int | float):  # a task's aux may be None (no auxiliary metric)
          self._writer.add_scalar(name, x, global_step=step, walltime=seconds)

  def __enter__(self) -> MetricsLog:
    return self

  def __exit__(self, *exc_info: object) -> None:
    self.close()

  def close(self) -> None:
    """Flush and close the event files (the JSON lines need nothing)."""
    if self._writer is not None:
      self._writer.close()
      self._writer = None

  def flush(self, history: Mapping[str, list]) -> None:
    """Append the rows of ``history`` not yet written, training steps before evaluations."""
    # Only the peak rows not yet written (each step appends its own with its
    # training row): a whole-history lookup every step would grow with the run.
    peaks = {key: {row[0]: row[1] for row in history.get(key, [])[self.written[key] :]} for key in self.peak_keys}
    records = []
    for split in ("train", "val"):
      records.extend(self._records(history, split, self.written[split], peaks))
    for split in self.written:
      self.written[split] = len(history.get(split, []))
    if records:
      with self.path.open("a") as f:
        f.writelines(json.dumps(_finite(r)) + "\n" for r in records)
    if self._writer is not None:
      for record in records:
        self._scalars(record)
