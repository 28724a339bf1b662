"""Seeds, metrics against a baseline, and ``matopt report``: config keys, run layout, records, re-rendering."""

import dataclasses
import json
import subprocess
import sys

import matplotlib
import numpy as np
import pytest
import yaml

from matopt import cli
from matopt.experiments import collect, metrics, optimizers, report, runner, tasks
from matopt.experiments import config as config_lib

SMALL = {
  "task": "gpt",
  "steps": 4,
  "batch_size": 4,
  "eval_every": 2,
  "eval_batches": 1,
  "model": {"layers": 1, "width": 16, "heads": 2, "seq_len": 16},
  "data": {"max_bytes": 50_000, "val_percent": 10},
  "schedule": {"warmup_steps": 1, "decay": "cosine"},
  "optimizers": [{"name": "adamw", "learning_rate": 0.03}, {"name": "sgd", "learning_rate": 0.3}],
}


def _parse(**changes):
  return config_lib.parse({**SMALL, **changes}, catalogue=optimizers.CATALOGUE, tasks=tasks.TASKS)


def test_seed_keys_default_and_refusals():
  config = _parse(seed=3)
  assert (config.run_seeds, config.baseline_name, config.speedup_horizons) == ((3,), "adamw", (1,))
  # Defaults stay out of config.json, so a directory of an older version still resumes.
  assert not {"seeds", "baseline", "speedup_horizons"} & set(config_lib.to_dict(config))
  config = _parse(seeds=[4, 5], speedup_horizons=[1, 2], baseline="sgd")
  assert (config.run_seeds, config.baseline_name, config.speedup_horizons) == ((4, 5), "sgd", (1, 2))
  assert _parse(seed=4, seeds=[4, 7]).run_seeds == (4, 7)
  for changes, match in [
    ({"seed": 1, "seeds": [0, 1]}, r"config.seed 1 and config.seeds \[0, 1\] disagree"),
    ({"seeds": [0, 0]}, r"distinct"),
    ({"seeds": []}, r"non-empty"),
    ({"baseline": "muon"}, r"config.baseline: no optimizer entry named 'muon'; its entries are \['adamw', 'sgd'\]"),
    ({"speedup_horizons": [2, 4]}, r"including 1"),
    ({"speedup_horizons": [1, 2], "optimizers": [{"name": "sgd", "learning_rate": 0.1}]}, r"no baseline"),
  ]:
    with pytest.raises(config_lib.ConfigError, match=match):
      _parse(**changes)


def test_seeds_override():
  config = _parse(seed=2)
  assert runner.override(config, seeds=3).run_seeds == (2, 3, 4)
  assert runner.override(config, seed=7, seeds=2).run_seeds == (7, 8)
  assert runner.override(_parse(seeds=[4, 5]), seed=1).run_seeds == (1,)
  assert runner.override(_parse(seeds=[4, 5]), seeds=1) == dataclasses.replace(_parse(seeds=[4, 5]), seeds=None, seed=4)
  with pytest.raises(config_lib.ConfigError, match=r"--seeds must be > 0"):
    runner.override(config, seeds=0)


@pytest.mark.parametrize("name", sorted(tasks.TASKS))
def test_batches_follow_the_run_seed(name):
  raw = {"task": name, "model": SMALL["model"] if name == "gpt" else {}, "data": SMALL["data"] if name == "gpt" else {}}
  task = tasks.TASKS[name](_parse(seed=3, **raw))
  leaves = lambda b: [np.asarray(x) for x in (b if isinstance(b, tuple) else (b,))]
  same = lambda a, b: all(np.array_equal(x, y) for x, y in zip(leaves(a), leaves(b)))
  assert same(task.train_batch(5), task.train_batch(5, 3))  # None: the config's seed, as before
  assert not same(task.train_batch(5, 3), task.train_batch(5, 4))


@pytest.fixture(scope="module")
def two_seeds(tmp_path_factory):
  """adamw (the baseline, also at 2× the steps) and sgd, 2 seeds each: 6 runs."""
  out = tmp_path_factory.mktemp("seeds") / "out"
  config = _parse(seeds=[0, 1], speedup_horizons=[1, 2], name="two_seeds")
  return config, out, runner.run(config, out, progress=False)


def test_every_seed_runs_and_records_are_means_over_seeds(two_seeds):
  config, out, records = two_seeds
  assert records == json.loads((out / "results.json").read_text())
  for r in records:
    assert r["seeds"] == [0, 1] and r["n_seeds"] == 2 and len(r["runs"]) == 2
    finals = [row["final_val_loss"] for row in r["runs"]]
    assert finals[0] != finals[1]  # init and batches differ by seed
    assert r["final_val_loss"] == pytest.approx(np.mean(finals))
    assert r["final_val_loss_std"] == pytest.approx(np.std(finals, ddof=1))
    for row in r["runs"]:  # every curve is in the run's result.json, referenced by path
      result = json.loads((out / row["result"]).read_text())
      assert result["seed"] == row["seed"] and len(result["history"]["train"]) == 4
      assert result["history"]["val"][-1][2] == row["final_val_loss"]
  adamw, sgd = records
  assert [h["steps"] for h in adamw["horizons"]] == [8]
  assert all((out / row["result"]).parent.name == "steps_8" for row in adamw["horizons"][0]["runs"])
  assert "horizons" not in sgd
  # The baseline against itself: exactly its own horizon-1 loss, so a speedup of 1 per seed.
  assert [row["data_speedup"] for row in adamw["runs"]] == [{"ratio": 1.0, "bound": ""}] * 2
  assert adamw["target_val_loss"] == adamw["final_val_loss"]
  for row in sgd["runs"]:
    history = json.loads((out / row["result"]).read_text())["history"]
    assert row["steps_to_target"] == metrics.steps_to_target(history, adamw["final_val_loss"])
  table = (out / "results.md").read_text()
  assert "data speedup vs adamw" in table and " ± " in table and "seeds [0, 1]" in table
  assert runner.run(config, out, progress=False) == records  # finished runs are reused, not retrained


def test_cli_seeds_flag(tmp_path, monkeypatch):
  path = tmp_path / "c.yaml"
  path.write_text(yaml.safe_dump({**SMALL, "seed": 3}))
  seen = []

  def fake_run(config, out, **kwargs):  # the training itself is tested above
    seen.append(config.run_seeds)
    out.mkdir(parents=True)
    (out / "results.md").write_text("| table |\n")
    return []

  monkeypatch.setattr(runner, "run", fake_run)
  assert cli.main(["run", str(path), "--out", str(tmp_path / "a"), "--seeds", "3"]) == 0
  assert cli.main(["run", str(path), "--out", str(tmp_path / "b"), "--seeds", "2", "--seed", "0"]) == 0
  assert seen == [(3, 4, 5), (0, 1)]


def test_report_recreates_the_outputs_without_training_or_a_backend(two_seeds):
  _, out, _ = two_seeds
  before = {name: (out / name).read_text() for name in ("results.md", "results.json")}
  for name in ("results.md", "results.json", "loss_vs_step.png", "loss_vs_time.png"):
    (out / name).unlink()
  code = (
    "import sys; from matopt import cli; rc = cli.main(['report', sys.argv[1]]); "
    "import jax._src.xla_bridge as xb; "
    "assert not xb.backends_are_initialized() and 'matopt.experiments.train' not in sys.modules; "
    "sys.exit(rc)"
  )
  done = subprocess.run([sys.executable, "-c", code, str(out)], check=False, capture_output=True, text=True)
  assert done.returncode == 0, done.stderr
  assert {name: (out / name).read_text() for name in before} == before
  assert before["results.md"] in done.stdout
  for plot in ("loss_vs_step.png", "loss_vs_time.png"):
    assert (out / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_of_a_partly_finished_directory(two_seeds, tmp_path, capsys):
  _, out, _ = two_seeds
  part = tmp_path / "part"
  for name in ("config.json", "meta.json"):
    (part / name).parent.mkdir(parents=True, exist_ok=True)
    (part / name).write_text((out / name).read_text())
  keep = collect.run_path("sgd", 0.3, 1) / "result.json"  # one seed of one optimizer
  (part / keep).parent.mkdir(parents=True)
  (part / keep).write_text((out / keep).read_text())
  assert cli.main(["report", str(part)]) == 0
  (record,) = json.loads((part / "results.json").read_text())
  assert (record["optimizer"], record["seeds"], record["final_val_loss_std"]) == ("sgd", [1], 0.0)
  assert "(1 of 2 optimizers with finished runs)" in capsys.readouterr().out
  assert cli.main(["report", str(tmp_path / "nothing")]) == 2
  assert "not the output directory of a `matopt run`" in capsys.readouterr().err


def test_plots_draw_a_band_over_seeds():
  matplotlib.use("Agg")
  rng = np.random.default_rng(0)
  histories = [
    {
      "train": [[s, 0.1 * s, 3 - 0.1 * s + rng.random()] for s in range(1, 21)],
      "val": [[s, 0.1 * s, 3 - 0.1 * s + rng.random(), 0.0] for s in (10, 20)],
    }
    for _ in range(3)
  ]
  one = collect.Curve("adamw", "adamw", 0.01, {}, histories[0])
  band = one._replace(histories=tuple(histories))
  count = lambda curve: sum(
    len(ax.collections) for ax in report.figures([curve], title="t", loss_unit="u")["step"].axes
  )
  assert (count(one), count(band)) == (0, 2)  # one band per panel, none for one seed
