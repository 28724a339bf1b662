"""metrics.jsonl: a run's per-step metrics as JSON lines, consistent with its history and its checkpoint."""

import json
import math

import numpy as np
import optax
import pytest

from matopt.experiments import config as config_lib
from matopt.experiments import logs, optimizers, tasks, train


def _digits_task():
  raw = {
    "task": "digits",
    "steps": 6,
    "batch_size": 16,
    "eval_batches": 1,
    "model": {"width": 8, "layers": 1},
    "optimizers": [{"name": "sgd", "learning_rate": 0.1}],
  }
  return tasks.TASKS["digits"](config_lib.parse(raw, catalogue=optimizers.CATALOGUE, tasks=tasks.TASKS))


def _read(path):
  return [json.loads(line) for line in path.read_text().splitlines()]


def test_lines_mirror_the_history_and_a_resumed_run_rewrites_from_its_checkpoint(tmp_path):
  task = _digits_task()
  whole = train.train(task, optax.sgd(0.1), steps=6, seed=0, eval_every=3, run_dir=tmp_path / "whole")
  lines = _read(tmp_path / "whole" / logs.FILE)
  steps = [r for r in lines if "train_loss" in r]
  evals = [r for r in lines if "val_loss" in r]
  assert [(r["step"], r["train_loss"]) for r in steps] == [(h[0], h[2]) for h in whole["history"]["train"]]
  assert [(r["step"], r["val_loss"]) for r in evals] == [(h[0], h[2]) for h in whole["history"]["val"]]
  assert [r["step"] for r in evals] == [3, 6] and all(r["seconds"] > 0 for r in lines)
  # Stopped after 4 steps with a checkpoint at 2, the file held 4 steps; the
  # resumed run rewrites it from the checkpoint (2 steps) and goes on, so
  # it ends with each step once, the same losses as the uninterrupted run.
  halves = tmp_path / "halves"
  train.train(task, optax.sgd(0.1), steps=6, seed=0, eval_every=3, run_dir=halves, checkpoint_every=2, stop_after=4)
  assert [r["step"] for r in _read(halves / logs.FILE) if "train_loss" in r] == [1, 2, 3, 4]
  train.train(task, optax.sgd(0.1), steps=6, seed=0, eval_every=3, run_dir=halves, checkpoint_every=2)
  resumed = _read(halves / logs.FILE)
  assert [(r["step"], r["train_loss"]) for r in resumed if "train_loss" in r] == [
    (r["step"], r["train_loss"]) for r in steps
  ]
  assert [r["step"] for r in resumed if "val_loss" in r] == [3, 6]


def test_non_finite_values_are_null_and_peaks_join_their_step(tmp_path):
  log = logs.MetricsLog(tmp_path / "sub" / logs.FILE, ("max_logit",))
  history = {
    "train": [[1, 0.5, 2.0], [2, 1.0, math.inf]],
    "val": [[2, 1.0, math.nan, {"acc": math.nan}]],
    "max_logit": [[1, 7.0], [2, 9.0]],
  }
  log.reset(history)
  assert _read(tmp_path / "sub" / logs.FILE) == [
    {"step": 1, "seconds": 0.5, "train_loss": 2.0, "max_logit": 7.0},
    {"step": 2, "seconds": 1.0, "train_loss": None, "max_logit": 9.0},
    {"step": 2, "seconds": 1.0, "val_loss": None, "val_aux": {"acc": None}},
  ]
  history["train"].append([3, 1.5, 1.0])
  log.flush(history)
  log.flush(history)  # nothing new: nothing written twice
  assert [r.get("train_loss", "val") for r in _read(tmp_path / "sub" / logs.FILE)] == [2.0, None, "val", 1.0]


def _events(directory):
  """(tag, step, wall time, value) of every scalar in a directory's event files (TFRecord framing)."""
  import struct

  from tensorboardX.proto import event_pb2

  out = []
  for path in sorted(directory.glob("events.out.tfevents.*")):
    data, i = path.read_bytes(), 0
    while i < len(data):
      (n,) = struct.unpack("<Q", data[i : i + 8])
      event = event_pb2.Event.FromString(data[i + 12 : i + 12 + n])
      i += 12 + n + 4  # length, its crc, the record, its crc
      out += [(v.tag, event.step, event.wall_time, v.simple_value) for v in event.summary.value]
  return out


def test_tensorboard_events_hold_the_same_scalars_and_a_resume_rewrites_them(tmp_path):
  pytest.importorskip("tensorboardX", reason="the [experiments] extra installs tensorboardX")
  task = _digits_task()
  whole = train.train(task, optax.sgd(0.1), steps=6, seed=0, eval_every=3, run_dir=tmp_path / "whole")
  events = _events(tmp_path / "whole" / logs.TENSORBOARD)
  train_events = [(s, w, v) for t, s, w, v in events if t == "train/loss"]
  want = [(h[0], h[1], h[2]) for h in whole["history"]["train"]]
  assert [s for s, _, _ in train_events] == [s for s, _, _ in want]
  np.testing.assert_allclose([(w, v) for _, w, v in train_events], [(w, v) for _, w, v in want], rtol=1e-6)
  val = [(s, v) for t, s, _, v in events if t == "val/loss"]
  np.testing.assert_allclose(val, [(h[0], h[2]) for h in whole["history"]["val"]], rtol=1e-6)
  assert {t for t, *_ in events} >= {"train/loss", "val/loss"}
  # Interrupted after 4 steps (checkpoint at 2) and resumed: each step once, as uninterrupted.
  halves = tmp_path / "halves"
  train.train(task, optax.sgd(0.1), steps=6, seed=0, eval_every=3, run_dir=halves, checkpoint_every=2, stop_after=4)
  train.train(task, optax.sgd(0.1), steps=6, seed=0, eval_every=3, run_dir=halves, checkpoint_every=2)
  resumed = [(s, v) for t, s, _, v in _events(halves / logs.TENSORBOARD) if t == "train/loss"]
  np.testing.assert_allclose(resumed, [(s, v) for s, _, v in train_events], rtol=1e-6)


def test_tensorboard_off_writes_no_events_and_dict_aux_gets_a_tag_per_key(tmp_path):
  pytest.importorskip("tensorboardX", reason="the [experiments] extra installs tensorboardX")
  history = {"train": [[1, 0.5, 2.0]], "val": [[1, 0.5, 1.5, {"acc": 0.25}]]}
  with logs.MetricsLog(tmp_path / "off" / logs.FILE, tensorboard=False) as log:
    log.reset(history)
  assert not (tmp_path / "off" / logs.TENSORBOARD).exists()
  with logs.MetricsLog(tmp_path / "on" / logs.FILE, tensorboard=True) as log:
    log.reset(history)
  assert sorted((t, s, v) for t, s, _, v in _events(tmp_path / "on" / logs.TENSORBOARD)) == [
    ("train/loss", 1, 2.0),
    ("val/aux/acc", 1, 0.25),
    ("val/loss", 1, 1.5),
  ]
