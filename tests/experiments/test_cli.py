"""The ``matopt`` command's own behaviour: --version, config names, messages, progress bar."""

import importlib.metadata
import io
from pathlib import Path

import numpy as np
import pytest
import yaml
from flax import nnx

import matopt
from matopt import cli
from matopt.experiments import config as config_lib
from matopt.experiments import models, runner

SHIPPED = sorted(p.stem for p in (Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))


def test_version_comes_from_the_package_metadata(capsys):
  with pytest.raises(SystemExit) as exit_:
    cli.main(["--version"])
  assert exit_.value.code == 0
  version = importlib.metadata.version("matopt")
  assert capsys.readouterr().out == f"matopt {version}\n"
  assert matopt.__version__ == version


@pytest.mark.parametrize(
  "typo, closest", [("quickstrat", "quickstart"), ("configs/digit.yaml", "digits"), ("gpt-mesh", "gpt_mesh")]
)
def test_a_config_name_with_a_typo_lists_the_shipped_configs(tmp_path, monkeypatch, capsys, typo, closest):
  assert {"quickstart", "digits", "gpt_mesh"} <= set(SHIPPED)
  monkeypatch.chdir(tmp_path)  # no ./configs here: the source tree's are the shipped ones
  assert cli.main(["run", typo, "--out", str(tmp_path / "out")]) == 2
  err = capsys.readouterr().err
  assert err.startswith(f"matopt: error: config {typo!r} does not exist")
  assert f"did you mean {closest!r}?" in err
  for name in SHIPPED:
    assert name in err
  assert not (tmp_path / "out").exists()


def test_configs_in_the_working_directory_are_listed_too(tmp_path, monkeypatch, capsys):
  (tmp_path / "configs").mkdir()
  (tmp_path / "configs" / "my_sweep.yaml").write_text("task: gpt\n")
  monkeypatch.chdir(tmp_path)
  assert cli.main(["run", "my_swep"]) == 2
  err = capsys.readouterr().err
  assert "did you mean 'my_sweep'?" in err and "quickstart" in err
  # Nothing close: no guess, still the list.
  assert cli.main(["run", "zzzzzz"]) == 2
  err = capsys.readouterr().err
  assert "did you mean" not in err and "my_sweep" in err and "quickstart" in err


def test_counts_of_one_are_singular(tmp_path, monkeypatch, capsys):
  path = tmp_path / "one.yaml"
  path.write_text(
    yaml.safe_dump(
      {"task": "gpt", "steps": 2, "batch_size": 4, "optimizers": [{"name": "muon", "learning_rate": 0.02}]}
    )
  )

  def fake_run(config, out, **kwargs):  # the training itself is test_runner's business
    out.mkdir(parents=True)
    (out / "results.md").write_text("| table |\n")
    return [{"optimizer": s.name} for s in config.optimizers]

  monkeypatch.setattr(runner, "run", fake_run)
  assert cli.main(["run", str(path), "--out", str(tmp_path / "out")]) == 0
  out = capsys.readouterr().out
  assert "(1 optimizer)," in out and "optimizers" not in out
  # A mesh of one device where JAX sees 8 (tests/conftest.py).
  raw = {
    "task": "gpt",
    "steps": 2,
    "batch_size": 4,
    "mesh": {"shape": [1], "axes": ["data"]},
    "optimizers": [{"name": "muon", "learning_rate": 0.02}],
  }
  with pytest.raises(config_lib.ConfigError, match=r"holds 1 device, but JAX sees 8"):
    runner.load(_yaml(tmp_path, raw))
  with pytest.raises(config_lib.ConfigError, match=r"width 63 must split into 1 head of even size"):
    runner.load(_yaml(tmp_path, {**raw, "mesh": None, "model": {"width": 63, "heads": 1}}))
  with pytest.raises(ValueError, match=r"width 63 must split into 1 head of even size"):
    models.GPT(vocab=8, width=63, layers=1, heads=1, seq_len=4, positions="rope", rngs=nnx.Rngs(0))
  assert [config_lib.count(n, "optimizer") for n in (0, 1, 2)] == ["0 optimizers", "1 optimizer", "2 optimizers"]
  assert config_lib.count(1, "validation image") == "1 validation image"


def _yaml(tmp_path, raw):
  path = tmp_path / "c.yaml"
  path.write_text(yaml.safe_dump(raw))
  return path


def test_progress_bar_says_its_loss_is_the_last_steps():
  from rich.console import Console

  bars = runner._Progress(True)
  rng = np.random.default_rng(0)
  losses = rng.uniform(1.0, 3.0, size=5)
  update = bars.start("muon", total=5)
  for step, loss in enumerate(losses, 1):
    update(step, float(loss))
  console = Console(file=io.StringIO(), width=120, color_system=None)
  console.print(bars.bar.get_renderable())
  text = console.file.getvalue()
  assert f"loss (last step) {losses[-1]:.4f}" in text, text
  assert "5/5" in text


def test_shipped_configs_are_package_data_found_by_name_anywhere(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)  # no ./configs: only the installed package's
  found = cli._resolve("quickstart")
  assert found == Path(matopt.__file__).resolve().parent / "configs" / "quickstart.yaml"
  assert sorted(p.stem for p in found.parent.glob("*.yaml")) == SHIPPED


def test_the_runner_without_its_extra_names_what_to_install(monkeypatch, capsys):
  import importlib.util

  import matopt.experiments

  real = importlib.util.find_spec

  def find_spec(name, *args):
    if name == "orbax.checkpoint":
      raise ModuleNotFoundError("No module named 'orbax'")
    return None if name == "rich" else real(name, *args)

  monkeypatch.setattr(importlib.util, "find_spec", find_spec)
  with pytest.raises(ImportError, match=r"needs orbax-checkpoint, rich, .*pip install \"matopt\[experiments\]\""):
    matopt.experiments.require()
  assert cli.main(["run", "quickstart", "--steps", "1"]) == 2
  assert 'pip install "matopt[experiments]"' in capsys.readouterr().err
