"""Size sweeps (``sizes:``): the config key, each size's derived config, the run layout and the trends."""

import dataclasses
import json
import math

import jax
import numpy as np
import pytest
from flax import nnx

from matopt import cli
from matopt.experiments import config as config_lib
from matopt.experiments import metrics, optimizers, runner, sizes, tasks, train, trends

SMALL = {
  "name": "tiny",
  "task": "gpt",
  "steps": 8,
  "batch_size": 4,
  "eval_every": 4,
  "eval_batches": 1,
  "model": {"layers": 1, "width": 16, "heads": 2, "seq_len": 16},
  "data": {"max_bytes": 50_000, "val_percent": 10},
  "schedule": {"warmup_steps": 2, "decay": "linear"},
  "optimizers": [{"name": "adamw", "learning_rate": [0.01, 0.03]}, {"name": "muon", "learning_rate": 0.02}],
}


def _parse(**changes):
  return config_lib.parse({**SMALL, **changes}, catalogue=optimizers.CATALOGUE, tasks=tasks.TASKS)


def test_sizes_key_parsed_and_kept_in_config_json():
  config = _parse(sizes={"key": "model.width", "values": [8, 16], "tokens_per_param": 2})
  assert config.sizes == config_lib.Sizes("model.width", (8, 16), 2.0)
  assert config.sizes.name(8) == "width_8"
  assert config_lib.to_dict(config)["sizes"] == {"key": "model.width", "values": (8, 16), "tokens_per_param": 2.0}
  assert "sizes" not in config_lib.to_dict(_parse())  # absent stays absent: older directories still resume


@pytest.mark.parametrize(
  "raw, match",
  [
    ({"key": "width", "values": [8]}, r"config.sizes.key must name one key of config.model"),
    ({"key": "model.a.b", "values": [8]}, r"one key of config.model"),
    ({"key": "model.width", "values": []}, r"non-empty list of distinct"),
    ({"key": "model.width", "values": [8, 8]}, r"distinct"),
    ({"key": "model.width", "values": [True]}, r"numbers or names"),
    ({"key": "model.width", "values": [8], "tokens_per_param": 0}, r"tokens_per_param must be > 0"),
    ({"key": "model.width", "values": [8], "steps": 3}, r"unknown key\(s\) \['steps'\]"),
    ({"key": "model.widht", "values": [8]}, r"config.sizes.values\[0\] = 8: .*widht"),
    ({"key": "model.width", "values": [16, 15]}, r"config.sizes.values\[1\] = 15: "),  # 15 is not a multiple of 2 heads
  ],
)
def test_sizes_refusals_name_the_place(raw, match):
  with pytest.raises(config_lib.ConfigError, match=match):
    _parse(sizes=raw)


def test_derive_counts_parameters_and_scales_steps_with_them():
  config = _parse(sizes={"key": "model.width", "values": [8, 32], "tokens_per_param": 4})
  infos = []
  for value in (8, 32):
    derived, info = sizes.derive(config, value)
    infos.append(info)
    assert derived.sizes is None and derived.model == {**SMALL["model"], "width": value}
    if value == 8:  # shapes only in derive; one real model (built eagerly, ~1 s) checks the count
      model = tasks.TASKS["gpt"](derived).make_model(0)
      assert info["params"] == sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    assert derived.steps == round(4 * info["params"] / (4 * 16)) == info["steps"]
    assert info["units"] == derived.steps * 64
    ratio = derived.steps / SMALL["steps"]
    assert derived.schedule.warmup_steps == round(2 * ratio)
    assert derived.eval_every == round(4 * ratio)
  small, large = infos
  assert large["steps"] > 4 * small["steps"]  # parameters grow faster than width
  # Without tokens_per_param (or with --steps) every size trains the config's steps.
  for fixed in (_parse(sizes={"key": "model.width", "values": [8, 32]}), runner.override(config, steps=5)):
    derived, info = sizes.derive(fixed, 32)
    assert derived.steps == info["steps"] == fixed.steps
    assert derived.schedule == fixed.schedule and derived.eval_every == fixed.eval_every


def test_transfer_slope_and_best_learning_rate():
  assert trends.transfer_slope([32, 64, 128], [0.04, 0.02, 0.01]) == pytest.approx(-1.0)
  assert trends.transfer_slope([32, 64, 128], [0.03, 0.03, 0.03]) == pytest.approx(0.0)
  assert trends.transfer_slope([32, 64], [0.03, None]) is None
  lrs = [0.005, 0.01, 0.02, 0.04]
  loss = [(math.log2(lr) - math.log2(0.014)) ** 2 + 2.0 for lr in lrs]  # a parabola in log lr, lowest at 0.014
  record = {
    "tuned": {"b2": 0.95},
    "grid": [
      *({"learning_rate": lr, "b2": 0.95, "final_val_loss": v} for lr, v in zip(lrs, loss)),
      {"learning_rate": 0.01, "b2": 0.99, "final_val_loss": 0.0},
    ],
  }  # another b2: not on the line
  assert trends.best_learning_rate(record) == pytest.approx(0.014)
  record["grid"][1]["final_val_loss"] = None  # a diverged point next to the best: no bracket, the best itself
  assert trends.best_learning_rate(record) == pytest.approx(0.02)


def test_parabola_minimum():
  x = np.arange(5.0)
  assert metrics.parabola_minimum(x, (x - 2.3) ** 2) == pytest.approx(2.3)
  assert metrics.parabola_minimum(x, (x - 0.2) ** 2) == 0.0  # lowest at an end: no bracket
  assert metrics.parabola_minimum(x, [9, 1, 0, 1, 9]) == 2.0
  assert metrics.parabola_minimum(x, [5, 4, 3, 3, 5]) == pytest.approx(2.5)
  assert metrics.parabola_minimum(x, [np.nan] * 5) is None
  with pytest.raises(ValueError, match="strictly increasing"):
    metrics.parabola_minimum([0, 0, 1], [1, 2, 3])


def test_sizes_run_layout_resume_and_report(tmp_path, monkeypatch, capsys):
  config = _parse(sizes={"key": "model.width", "values": [8, 16], "tokens_per_param": 1.0}, speedup_horizons=[1, 2])
  out = tmp_path / "out"
  records = runner.run(config, out, progress=False)
  assert [s["value"] for s in records] == [8, 16]
  meta = json.loads((out / "meta.json").read_text())
  for size, info in zip(records, meta["sizes"]):
    directory = out / "sizes" / f"width_{size['value']}"
    assert info["dir"] == f"sizes/width_{size['value']}"
    sub = json.loads((directory / "config.json").read_text())
    derived, _ = sizes.derive(config, size["value"])
    assert sub == json.loads(json.dumps(config_lib.to_dict(derived)))  # an ordinary run directory of that config
    assert sub["steps"] == size["steps"] and sub["model"]["width"] == size["value"]
    assert {r["optimizer"] for r in size["records"]} == {"adamw", "muon"}
    assert list((directory / "runs" / "adamw").glob(f"lr_*/seed_0/steps_{2 * size['steps']}/result.json"))
  text = (out / "results.md").read_text()
  for part in (
    "| width | params |",
    "## Final validation loss",
    "## Speedup over adamw",
    "## Best learning rate",
    "| adamw |",
  ):
    assert part in text
  for name in ("loss_vs_params.png", "speedup_vs_params.png", "lr_transfer.png", "trends.json"):
    assert (out / name).stat().st_size > 0
  saved = json.loads((out / "trends.json").read_text())
  # Two grid points: the better one is the best (no bracket to interpolate in).
  for rate in saved["transfer"]["adamw"]["best_learning_rates"]:
    assert rate == pytest.approx(0.01) or rate == pytest.approx(0.03)
  assert saved["transfer"]["muon"]["best_learning_rates"] == pytest.approx([0.02, 0.02])

  # Resume trains nothing; `matopt report` re-renders the same files from the runs.
  monkeypatch.setattr(train, "train", lambda *a, **k: pytest.fail("a finished sizes run retrained"))
  assert runner.run(config, out, progress=False) == records
  before = {p: (out / p).read_bytes() for p in ("trends.json", "results.md")}
  assert cli.main(["report", str(out)]) == 0
  assert "2 sizes" in capsys.readouterr().out
  assert {p: (out / p).read_bytes() for p in before} == before

  # A size directory is an ordinary output directory: its own config resumes it.
  derived, info = sizes.derive(config, 16)
  assert runner.run(derived, out / info["dir"], progress=False) == records[1]["records"]
  # A different sizes config is refused there, as any other config change.
  with pytest.raises(config_lib.ConfigError, match="different config"):
    runner.run(dataclasses.replace(config, sizes=dataclasses.replace(config.sizes, values=(8,))), out, progress=False)
