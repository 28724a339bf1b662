"""The recorded studies (speedup, scaling, lr_transfer) run end to end in a few steps, so their configs cannot rot.

Each runs through the command line with the model, data and grids shrunk by
``--set`` and ``--steps``; what stays is each config's structure: its seeds,
baseline horizons, tuned options and size sweep.
"""

import json

import pytest

from matopt import cli

SHRINK = [
  "--steps",
  "3",
  "--set",
  "model.layers=1",
  "--set",
  "model.seq_len=16",
  "--set",
  "batch_size=4",
  "--set",
  "eval_every=1",
  "--set",
  "eval_batches=1",
  "--set",
  "data.max_bytes=40000",
]
STUDIES = {
  # AdamW keeps its tuned beta2 grid, extended past an edge.
  "speedup": [
    "--optimizers",
    "adamw,muon",
    "--seeds",
    "2",
    "--set",
    "optimizers.adamw.learning_rate.grid=[0.01,0.02]",
    "--set",
    "optimizers.adamw.learning_rate.extend=1",
    "--set",
    "speedup_horizons=[1,2]",
    "--set",
    "optimizers.muon.learning_rate=[0.03]",
  ],
  "scaling": [
    "--optimizers",
    "adamw,scion",
    "--seeds",
    "1",
    "--set",
    "sizes.values=[16,32]",
    "--set",
    "speedup_horizons=[1,2]",
    "--set",
    "optimizers.adamw.learning_rate=[0.01]",
    "--set",
    "optimizers.scion.learning_rate=[0.001]",
  ],
  "lr_transfer": [
    "--optimizers",
    "adamw",
    "--seeds",
    "1",
    "--set",
    "sizes.values=[16,32]",
    "--set",
    "optimizers.adamw.learning_rate=[0.01,0.02]",
  ],
}


@pytest.mark.parametrize("name", sorted(STUDIES))
def test_study_config_runs_in_a_few_steps(name, tmp_path, capsys):
  out = tmp_path / name
  assert cli.main(["run", name, "--out", str(out), "--quiet", *SHRINK, *STUDIES[name]]) == 0
  config = json.loads((out / "config.json").read_text())
  if config.get("sizes"):
    trends = json.loads((out / "trends.json").read_text())
    assert [s["value"] for s in trends["sizes"]] == [16, 32]
    assert all(len(s["records"]) == len(STUDIES[name][1].split(",")) for s in trends["sizes"])
    records = [r for s in trends["sizes"] for r in s["records"]]
    assert (out / "lr_transfer.png").is_file() == (name == "lr_transfer")  # a grid only where one was kept
  else:
    records = json.loads((out / "results.json").read_text())
    assert records[0]["tuned"]["b2"] in (0.95, 0.99)
    assert records[0]["n_seeds"] == 2
  if config.get("speedup_horizons", [1]) != [1]:
    assert all("data_speedup" in r for r in records)
  assert "Wrote" in capsys.readouterr().out


def test_quickstart_rates_are_the_recorded_speedup_study_choices():
  """configs/quickstart.yaml takes each optimizer's point as tuned at its own 400 steps in docs/speedup/."""
  from pathlib import Path

  from matopt.experiments import runner

  root = Path(__file__).resolve().parents[2]
  quickstart, speedup = runner.load(root / "configs/quickstart.yaml"), runner.load(root / "configs/speedup.yaml")
  assert (quickstart.steps, quickstart.model, quickstart.schedule) == (speedup.steps, speedup.model, speedup.schedule)
  chosen = {r["optimizer"]: r for r in json.loads((root / "docs/speedup/results.json").read_text())}
  assert [s.name for s in quickstart.optimizers] == list(chosen)
  for spec in quickstart.optimizers:
    record = chosen[spec.name]
    assert spec.learning_rates == (record["learning_rate"],), spec.name
    for option, value in record.get("tuned", {}).items():
      assert spec.options[option] == value, (spec.name, option)
