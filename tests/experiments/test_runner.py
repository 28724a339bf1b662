"""``matopt run`` end to end on tiny configs: outputs, grids, resume."""

import json
import subprocess
import sys

import numpy as np
import pytest
import yaml

from matopt import cli
from matopt.experiments import runner

TINY = {
  "task": "gpt",
  "steps": 6,
  "batch_size": 4,
  "eval_every": 3,
  "eval_batches": 2,
  "model": {"layers": 1, "width": 16, "heads": 2, "seq_len": 16},
  "data": {"max_bytes": 50_000, "val_percent": 10},
  "schedule": {"warmup_steps": 2, "decay": "cosine"},
  "optimizers": [
    {"name": "adamw", "learning_rate": [0.003, 0.03]},
    {"name": "muon", "learning_rate": 0.02, "adam_learning_rate": 0.003},
  ],
}


def _write(tmp_path, raw, name="tiny"):
  path = tmp_path / f"{name}.yaml"
  path.write_text(yaml.safe_dump(raw))
  return path


def test_run_writes_results_table_and_plots(tmp_path, capsys):
  out = tmp_path / "out"
  assert cli.main(["run", str(_write(tmp_path, TINY)), "--out", str(out), "--quiet"]) == 0
  records = json.loads((out / "results.json").read_text())
  assert [r["optimizer"] for r in records] == ["adamw", "muon"]
  for r in records:
    for key in (
      "final_train_loss",
      "final_val_loss",
      "val_perplexity",
      "steps",
      "wall_seconds",
      "throughput",
      "hyperparameters",
      "grid",
    ):
      assert r[key] is not None, key
    assert r["steps"] == 6 and r["throughput_unit"] == "tokens/s"
    np.testing.assert_allclose(r["val_perplexity"], np.exp(r["final_val_loss"]), rtol=1e-6)
    assert r["final_val_loss"] < np.log(256)  # better than uniform bytes
  adamw = records[0]
  assert [g["learning_rate"] for g in adamw["grid"]] == [0.003, 0.03]
  best = min(adamw["grid"], key=lambda g: g["final_val_loss"])
  assert adamw["learning_rate"] == best["learning_rate"] == adamw["hyperparameters"]["learning_rate"]
  assert records[1]["hyperparameters"]["adam_learning_rate"] == 0.003
  table = (out / "results.md").read_text()
  assert "| adamw | " in table and "(best of 2)" in table and "| muon | 0.02 |" in table
  assert table in capsys.readouterr().out
  for plot in ("loss_vs_step.png", "loss_vs_time.png"):
    assert (out / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_overrides_and_reuse(tmp_path):
  path = _write(tmp_path, TINY)
  config = runner.override(runner.load(path), steps=4, seed=3, optimizers=["muon"])
  assert (config.steps, config.seed, [s.name for s in config.optimizers]) == (4, 3, ["muon"])
  out = tmp_path / "out"
  first = runner.run(config, out, progress=False)
  # Finished runs in the same directory are reused, not retrained.
  again = runner.run(config, out, progress=False)
  assert first[0]["final_val_loss"] == again[0]["final_val_loss"]
  assert first[0]["wall_seconds"] == again[0]["wall_seconds"]
  # Another config in the same directory is refused, not mixed in.
  with pytest.raises(ValueError, match=r"holds runs of a different config \(differs in \['steps'\]\)"):
    runner.run(runner.override(config, steps=5), out, progress=False)
  fresh = runner.run(runner.override(config, steps=5), out, progress=False, overwrite=True)
  assert fresh[0]["steps"] == 5


@pytest.mark.parametrize("optimizer", ["muon", "soap", "scion"])
def test_checkpoint_resume_is_exact(tmp_path, optimizer):
  raw = {**TINY, "steps": 8, "checkpoint_every": 2, "optimizers": [{"name": optimizer, "learning_rate": 0.01}]}
  config = runner.load(_write(tmp_path, raw))
  whole = runner.run(config, tmp_path / "whole", progress=False)
  assert runner.run(config, tmp_path / "cut", progress=False, stop_after=5) == []  # interrupted
  assert not (tmp_path / "cut" / "results.json").exists()
  resumed = runner.run(config, tmp_path / "cut", progress=False)
  history = lambda d: json.loads(next((tmp_path / d / "runs").glob("*/*/seed_*/result.json")).read_text())["history"]
  # Bit-for-bit on CPU: the same losses at every step, the same final validation.
  assert [h[2] for h in history("cut")["train"]] == [h[2] for h in history("whole")["train"]]
  assert [h[0] for h in history("cut")["train"]] == list(range(1, 9))
  assert resumed[0]["final_val_loss"] == whole[0]["final_val_loss"]


@pytest.mark.parametrize(
  "kind, matrix_optimizer",
  [
    ("mlp", {"name": "scion", "learning_rate": 0.01}),
    # The hidden 3×3 convolution is a 4-D kernel that Muon views as a matrix.
    ("cnn", {"name": "muon", "learning_rate": 0.05, "adam_learning_rate": 0.01}),
  ],
)
def test_digits_task_learns(tmp_path, kind, matrix_optimizer):
  raw = {
    "task": "digits",
    "steps": 60,
    "batch_size": 32,
    "eval_batches": 2,
    "model": {"kind": kind, "width": 32, "layers": 2},
    "optimizers": [matrix_optimizer, {"name": "adamw", "learning_rate": 0.01, "weight_decay": 0.0}],
  }
  records = runner.run(runner.load(_write(tmp_path, raw)), tmp_path / "out", progress=False)
  for r in records:
    assert r["throughput_unit"] == "examples/s"
    assert r["val_accuracy"] > 0.5, r  # chance is 0.1
    assert r["final_val_loss"] < np.log(10)


def test_diverged_run_is_reported_not_crashed(tmp_path):
  raw = {**TINY, "optimizers": [{"name": "sgd", "learning_rate": 1e6}]}
  (record,) = runner.run(runner.load(_write(tmp_path, raw)), tmp_path / "out", progress=False)
  assert record["diverged"] and record["final_val_loss"] is None
  assert "(diverged)" in (tmp_path / "out" / "results.md").read_text()


def test_python_dash_m_help():
  done = subprocess.run([sys.executable, "-m", "matopt", "run", "--help"], capture_output=True, text=True, check=True)
  assert "--optimizers" in done.stdout and "configs/quickstart.yaml" in done.stdout


def test_muon_clip_runs_on_the_gpt_and_is_refused_without_attention(tmp_path, capsys):
  raw = {**TINY, "optimizers": [{"name": "muon_clip", "learning_rate": 0.02, "tau": 1.0, "adam_learning_rate": 0.003}]}
  (record,) = runner.run(runner.load(_write(tmp_path, raw)), tmp_path / "out", progress=False)
  assert not record["diverged"] and np.isfinite(record["final_val_loss"])
  assert np.isfinite(record["final_max_logit"])  # what QK-clip saw, in results.json
  digits = {
    "task": "digits",
    "steps": 2,
    "batch_size": 8,
    "eval_batches": 1,
    "optimizers": [{"name": "muon_clip", "learning_rate": 0.02}],
  }
  out = tmp_path / "digits"
  assert cli.main(["run", str(_write(tmp_path, digits, "digits")), "--out", str(out)]) == 2
  err = capsys.readouterr().err
  assert "muon_clip's update needs max_logits, which the 'digits' task's models cannot report" in err
  assert not out.exists()
