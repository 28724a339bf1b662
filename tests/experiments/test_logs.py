"""metrics.jsonl: a run's per-step metrics as JSON lines, consistent with its history and its checkpoint."""

import json
import math

import optax

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
