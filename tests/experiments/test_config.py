"""Configs: every shipped config parses; every bad input is one clear error
raised before any data is loaded or any step is taken."""

import re
from pathlib import Path

import pytest
import yaml

from matopt import cli
from matopt.experiments import runner
from matopt.experiments.config import ConfigError, _Loader

CONFIGS = sorted((Path(__file__).parents[2] / "configs").glob("*.yaml"))
BASE = {
  "task": "gpt",
  "steps": 5,
  "batch_size": 2,
  "model": {"layers": 1, "width": 16, "heads": 2, "seq_len": 8},
  "optimizers": [{"name": "adamw", "learning_rate": 1e-3}],
}


def _parse(raw):
  from matopt.experiments import config, optimizers, tasks

  return config.parse(raw, catalogue=optimizers.CATALOGUE, tasks=tasks.TASKS)


def _with(**changes):
  raw = {**BASE, **changes}
  return {k: v for k, v in raw.items() if v is not None}


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_shipped_configs_parse(path):
  config = runner.load(path)
  assert config.name == path.stem and config.optimizers


def test_quickstart_has_the_issue_optimizers():
  names = {s.optimizer for s in runner.load(Path(cli.DEFAULT_CONFIG)).optimizers}
  assert {"adamw", "muon", "scion", "shampoo", "soap", "signum", "nsgd", "clipped_sgd"} <= names


def test_yaml_reads_exponents_as_floats():
  assert yaml.load("a: 3e-4\nb: -1E2\nc: 2\nd: x1e3", Loader=_Loader) == {"a": 3e-4, "b": -100.0, "c": 2, "d": "x1e3"}


def test_grid_and_options_are_kept():
  config = _parse(
    _with(optimizers=[{"name": "fast_muon", "optimizer": "muon", "learning_rate": [0.01, 0.02], "scale": "rms"}])
  )
  (spec,) = config.optimizers
  assert (spec.name, spec.optimizer, spec.learning_rates, dict(spec.options)) == (
    "fast_muon",
    "muon",
    (0.01, 0.02),
    {"scale": "rms"},
  )


@pytest.mark.parametrize(
  "changes, match",
  [
    (
      {"optimizers": [{"name": "lion", "learning_rate": 1e-3}]},
      r"config.optimizers\[0\]: unknown optimizer 'lion'; valid optimizers are \['adam', 'adamuon', 'adamw', .*'normuon', .*'soap'",
    ),
    ({"stepz": 3}, r"config: unknown key\(s\) \['stepz'\]; valid keys are \[.*'steps'"),
    ({"steps": "100"}, r"config.steps must be int, got str '100'"),
    ({"steps": 0}, r"config.steps must be > 0"),
    ({"task": "mnist"}, r"unknown task 'mnist'; valid tasks are \['digits', 'gpt'\]"),
    ({"steps": None}, r"missing required key\(s\) \['steps'\]"),
    ({"model": {"layers": 1, "depth": 3}}, r"config.model: unknown key\(s\) \['depth'\]; valid keys are"),
    ({"model": {"positions": "alibi"}}, r"positions: unknown 'alibi'; valid choices are \('rope', 'learned'\)"),
    ({"model": {"width": 30, "heads": 4}}, "width 30 must split into 4 heads"),
    ({"data": {"val_percent": 100}}, r"val_percent must lie in \(0, 100\)"),
    (
      {"schedule": {"decay": "step"}},
      r"config.schedule.decay: unknown 'step'; valid choices are \('constant', 'linear', 'cosine'\)",
    ),
    ({"schedule": {"decay": 3}}, r"config.schedule.decay must be 'constant' or 'linear' or 'cosine', got int 3"),
    ({"schedule": {"warmup": 3}}, r"config.schedule: unknown key\(s\) \['warmup'\]"),
    ({"optimizers": []}, "config.optimizers must be a non-empty list"),
    ({"optimizers": ["muon"]}, r"config.optimizers\[0\] must be a mapping with at least 'name', got 'muon'"),
    ({"optimizers": [{"learning_rate": 0.1}]}, r"config.optimizers\[0\].name must be a string naming the run"),
    (
      {"optimizers": [{"name": "muon", "learning_rate": 0.02, "momentum": float("nan")}]},
      r"config.optimizers\[0\]: momentum must lie in \[0.0, 1.0\)",
    ),
    ({"schedule": {"final_fraction": 1.5}}, r"config.schedule.final_fraction must lie in \[0, 1\], got 1.5"),
    (
      {"optimizers": [{"name": "muon", "learning_rate": 0.02, "momentun": 0.9}]},
      r"config.optimizers\[0\]: unknown option\(s\) \['momentun'\]; valid options are \[.*'momentum'",
    ),
    (
      {"optimizers": [{"name": "muon", "learning_rate": 0.02, "momentum": "high"}]},
      r"config.optimizers\[0\].momentum must be float, got str 'high'",
    ),
    (
      {"optimizers": [{"name": "muon", "learning_rate": 0.02, "scale": "spectral"}]},
      r"config.optimizers\[0\]: .*valid scales are",
    ),
    (
      {"optimizers": [{"name": "scion", "learning_rate": 0.1, "radii": {"hiden": 1.0}}]},
      r"radii has unknown roles \['hiden'\]",
    ),
    (
      {"optimizers": [{"name": "scion", "learning_rate": 0.1, "radii": {"hidden": "big"}}]},
      r"config.optimizers\[0\].radii must be mapping of str to float or null, got dict",
    ),
    (
      {"optimizers": [{"name": "muon", "learning_rate": 0.02, "adaptive": "normuon"}]},
      (
        r"config.optimizers\[0\].adaptive: adaptive takes .*GradientTransformation.*, a Python object that YAML "
        r"cannot express \(its default None is used\); for an adaptive second moment name normuon or "
        r"adamuon as 'optimizer:' \(muon with one set\); or build the optimizer in Python: matopt.muon"
      ),
    ),
    (
      {"optimizers": [{"name": "adamw", "learning_rate": 0.01, "mask": [True]}]},
      (
        r"config.optimizers\[0\].mask: .*a Python object .*build the optimizer in Python: "
        r"optax.adamw\(learning_rate, mask=...\)"
      ),
    ),
    (
      {"task": "digits", "model": None, "optimizers": [{"name": "muon_clip", "learning_rate": 0.02}]},
      (
        r"config.optimizers\[0\]: muon_clip's update needs max_logits, which the 'digits' task's models cannot "
        r"report \(they report nothing\); use muon_clip with a task that can \('gpt'\)"
      ),
    ),
    ({"optimizers": [{"name": "adamw"}]}, r"learning_rate must be a positive number or a non-empty list"),
    ({"optimizers": [{"name": "adamw", "learning_rate": [0.1, -1.0]}]}, "learning_rate must be a positive"),
    (
      {"optimizers": [{"name": "adamw", "learning_rate": 0.1}, {"name": "adamw", "learning_rate": 0.2}]},
      r"names \['adamw'\] appear twice",
    ),
  ],
)
def test_bad_configs(changes, match):
  raw = _with(**changes)
  if changes.get("model") is not None:
    raw["model"] = {**BASE["model"], **changes["model"]}
  with pytest.raises(ConfigError, match=match):
    _parse(raw)


def test_cli_reports_a_bad_config_before_training(tmp_path, capsys):
  path = tmp_path / "bad.yaml"
  path.write_text(
    yaml.safe_dump(
      _with(optimizers=[{"name": "adamw", "learning_rate": 1e-3}, {"name": "lion", "learning_rate": 1e-3}])
    )
  )
  out = tmp_path / "out"
  assert cli.main(["run", str(path), "--out", str(out)]) == 2
  assert "unknown optimizer 'lion'" in capsys.readouterr().err
  assert not out.exists()  # nothing trained, nothing written


@pytest.mark.parametrize(
  "args, match",
  [
    (["--optimizers", "adamw,lion"], r"--optimizers: \['lion'\] not in this config; its optimizers are \['adamw'\]"),
    (["--steps", "0"], "--steps must be > 0"),
  ],
)
def test_cli_bad_overrides(tmp_path, capsys, args, match):
  path = tmp_path / "c.yaml"
  path.write_text(yaml.safe_dump(BASE))
  assert cli.main(["run", str(path), "--out", str(tmp_path / "out"), *args]) == 2
  assert re.search(match, capsys.readouterr().err)


def test_missing_config_file(tmp_path, capsys):
  assert cli.main(["run", str(tmp_path / "nope.yaml")]) == 2
  assert "does not exist" in capsys.readouterr().err


def test_invalid_yaml(tmp_path, capsys):
  path = tmp_path / "broken.yaml"
  path.write_text("steps: [1, 2\n")
  assert cli.main(["run", str(path)]) == 2
  assert re.search(r"broken.yaml: not valid YAML", capsys.readouterr().err)


def test_configs_readme_lists_every_optimizer():
  from matopt.experiments import optimizers

  text = (Path(__file__).parents[2] / "configs" / "README.md").read_text()
  assert [n for n in sorted(optimizers.CATALOGUE) if f"`{n}`" not in text] == []


def _set(tmp_path, *assignments, raw=BASE):
  path = tmp_path / "c.yaml"
  path.write_text(yaml.safe_dump(raw))
  return runner.load(path, overrides=assignments)


def test_set_overrides_any_key_by_its_dotted_path(tmp_path):
  raw = {
    **BASE,
    "optimizers": [
      {"name": "adamw", "learning_rate": 1e-3},
      {"name": "fast", "optimizer": "muon", "learning_rate": 0.02},
    ],
  }
  config = _set(
    tmp_path,
    "optimizers.0.learning_rate=[0.01, 0.02]",
    "optimizers.fast.momentum=0.9",
    "schedule.decay=cosine",
    "schedule.warmup_steps=3",
    "model.heads=4",
    "steps=7",
    raw=raw,
  )
  assert config.optimizers[0].learning_rates == (0.01, 0.02)
  assert dict(config.optimizers[1].options) == {"momentum": 0.9}
  assert (config.schedule.decay, config.schedule.warmup_steps, config.steps) == ("cosine", 3, 7)
  assert config.model["heads"] == 4
  # The file is unchanged; the effective config is what results.json records.
  assert runner.load(tmp_path / "c.yaml").optimizers[0].learning_rates == (0.001,)


@pytest.mark.parametrize(
  "assignment, match",
  [
    ("optimizers.0.learning_rat=0.1", r"config.optimizers\[0\]: unknown option\(s\) \['learning_rat'\]"),
    ("optimizers.3.learning_rate=0.1", r"--set optimizers.3: index 3 is out of range; optimizers has 1 entry"),
    (
      "optimizers.lion.momentum=0.9",
      r"--set optimizers.lion: no entry named 'lion'; give an index \(0 to 0\) or one of the names \['adamw'\]",
    ),
    ("steps=ten", r"config.steps must be int, got str 'ten'"),
    ("steps.max=3", r"--set steps.max: steps is int 5, which has no keys to set"),
    ("schedule.decay", r"--set 'schedule.decay': expected KEY=VALUE"),
    ("schedule..decay=cosine", r"expected KEY=VALUE with a dotted KEY"),
    ("stepz=3", r"config: unknown key\(s\) \['stepz'\]"),
    ("optimizers.0.b1=[0.9", r"--set 'optimizers.0.b1=\[0.9': the value is not valid YAML"),
  ],
)
def test_bad_set_is_refused_like_a_bad_file(tmp_path, assignment, match):
  with pytest.raises(ConfigError, match=match):
    _set(tmp_path, assignment)


def test_cli_set(tmp_path, capsys):
  path = tmp_path / "c.yaml"
  path.write_text(yaml.safe_dump(BASE))
  assert cli.main(["run", str(path), "--out", str(tmp_path / "out"), "--set", "optimizers.0.b2=high"]) == 2
  assert "config.optimizers[0].b2 must be float, got str 'high'" in capsys.readouterr().err
  assert not (tmp_path / "out").exists()
