"""Tuning at the reported horizon: grids extended past an edge, grids over other options, the cached choice."""

import dataclasses
import json
import math

import pytest
import yaml

from matopt import cli
from matopt.experiments import config as config_lib
from matopt.experiments import optimizers, runner, tasks, tuning
from matopt.experiments.tuning import Grid, Point

TINY = {
  "task": "gpt",
  "steps": 3,
  "batch_size": 4,
  "eval_batches": 1,
  "model": {"layers": 1, "width": 16, "heads": 2, "seq_len": 16},
  "data": {"max_bytes": 50_000, "val_percent": 10},
  "schedule": {"warmup_steps": 1},
}


def _parse(optimizers_):
  return config_lib.parse({**TINY, "optimizers": optimizers_}, catalogue=optimizers.CATALOGUE, tasks=tasks.TASKS)


def _fetcher(loss, trained):
  """A fake ``fetch``: one seed whose final val loss is ``loss(point)`` (None: diverged)."""

  def fetch(point):
    trained.append(point)
    value = loss(point)
    return {0: {"final_val_loss": value, "diverged": value is None}}

  return fetch


# tuning.search on fake losses: which points are tried, which is chosen.


def test_best_at_the_top_edge_extends_up_until_inside():
  trained = []
  # A valley at 0.1: the grid [0.001, 0.003, 0.01] has its best at the top edge.
  outcome = tuning.search(
    Grid((0.001, 0.003, 0.01), extend=5), _fetcher(lambda p: abs(math.log(p.learning_rate / 0.1)), trained)
  )
  assert [p.learning_rate for p in trained] == [0.001, 0.003, 0.01, 0.03, 0.1, 0.3]
  assert outcome.best == Point(0.1) and outcome.extended == (0.03, 0.1, 0.3) and not outcome.at_edge


def test_extension_stops_at_the_bound_and_says_the_best_is_at_the_edge():
  trained = []
  outcome = tuning.search(Grid((1.0, 2.0), extend=2), _fetcher(lambda p: -p.learning_rate, trained))
  assert [p.learning_rate for p in trained] == [1.0, 2.0, 4.0, 8.0]
  assert outcome.best == Point(8.0) and outcome.at_edge
  # A stated factor instead of the grid's ratio; diverged everywhere: inf, so down from the smallest.
  trained = []
  outcome = tuning.search(Grid((1.0,), extend=2, factor=10.0), _fetcher(lambda p: None, trained))
  assert [p.learning_rate for p in trained] == [1.0, 10.0, 0.1]


def test_half_decade_grids_continue_along_1_3_10():
  grid = Grid((0.003, 0.01, 0.03), extend=2)
  assert [grid.next_rate(0.03, up=True), grid.next_rate(0.1, up=True)] == [0.1, 0.3]
  assert [grid.next_rate(0.003, up=False), grid.next_rate(0.001, up=False)] == [0.001, 0.0003]
  # Other geometric grids step by their own ratio, or by a stated factor.
  assert Grid((0.01, 0.02, 0.04), extend=1).next_rate(0.04, up=True) == 0.08
  assert Grid((0.001, 0.003), extend=1, factor=2.0).next_rate(0.003, up=True) == 0.006


def test_a_plain_grid_never_extends():
  trained = []
  outcome = tuning.search(Grid((1.0, 2.0)), _fetcher(lambda p: -p.learning_rate, trained))
  assert [p.learning_rate for p in trained] == [1.0, 2.0]
  assert outcome.best == Point(2.0) and outcome.extended == () and not outcome.at_edge


def test_product_grid_tries_every_point_and_extends_along_the_best_line():
  trained = []
  grid = Grid((1.0, 2.0), tune=(("b2", (0.9, 0.99)), ("weight_decay", (0.0, 0.1))), extend=1)
  loss = lambda p: -p.learning_rate + dict(p.tuned)["weight_decay"] - dict(p.tuned)["b2"]
  outcome = tuning.search(grid, _fetcher(loss, trained))
  assert len(trained) == 9 and len(set(trained[:8])) == 8
  best_values = (("b2", 0.99), ("weight_decay", 0.0))
  assert trained[8] == Point(4.0, best_values)  # only at the best point's other values
  assert outcome.best == Point(4.0, best_values) and outcome.at_edge


def test_search_reads_only_what_is_there():
  """A report of an interrupted run: an extension point not trained yet ends the search."""
  outcome = tuning.search(
    Grid((1.0, 2.0), extend=3),
    lambda p: {0: {"final_val_loss": -p.learning_rate, "diverged": False}} if p.learning_rate < 3 else {},
  )
  assert outcome.best == Point(2.0) and outcome.extended == () and outcome.at_edge
  assert tuning.search(Grid((1.0,)), lambda p: {}) is None


# Config keys.


def test_config_keys_round_trip_and_plain_entries_are_unchanged():
  config = _parse(
    [
      {
        "name": "adamw",
        "learning_rate": {"grid": [0.003, 0.01, 0.03], "extend": 3},
        "tune": {"b2": [0.95, 0.99], "schedule.warmup_steps": [0, 2]},
      },
      {"name": "sgd", "learning_rate": {"grid": [0.1], "extend": 1, "factor": 3}},
      {"name": "muon", "learning_rate": [0.01, 0.02]},
    ]
  )
  adamw = config.optimizers[0]
  assert (adamw.learning_rates, adamw.extend, adamw.factor) == ((0.003, 0.01, 0.03), 3, None)
  assert adamw.tune == {"b2": (0.95, 0.99), "schedule.warmup_steps": (0, 2)}
  entries = config_lib.to_dict(config)["optimizers"]
  assert entries[0]["learning_rate"] == {"grid": [0.003, 0.01, 0.03], "extend": 3}
  assert entries[1]["learning_rate"] == {"grid": [0.1], "extend": 1, "factor": 3.0}
  assert entries[2] == {"name": "muon", "optimizer": "muon", "learning_rate": [0.01, 0.02]}
  assert (
    tuning.of_entry(entries[0]).ratio() == pytest.approx(math.sqrt(10)) and tuning.of_entry(entries[1]).ratio() == 3.0
  )
  assert len(tuning.of_entry(entries[0]).points()) == 12


@pytest.mark.parametrize(
  "entry, match",
  [
    ({"learning_rate": {"grid": [0.01, 0.02, 0.08], "extend": 2}}, r"extend needs a geometric grid .* give factor"),
    ({"learning_rate": {"grid": [0.01], "extend": 2}}, r"extend needs a geometric grid"),
    ({"learning_rate": {"grid": [0.01, 0.1], "extend": -1}}, r"learning_rate.extend must be >= 0"),
    ({"learning_rate": {"grid": [0.01, 0.1], "factor": 0.5}}, r"factor must be a number > 1"),
    ({"learning_rate": {"grid": [0.01], "step": 2}}, r"learning_rate must be a positive number or a non-empty list"),
    ({"learning_rate": 0.01, "tune": {"bogus": [1, 2]}}, r"tune.bogus\[0\]: unknown option 'bogus'"),
    ({"learning_rate": 0.01, "tune": {"b2": 0.9}}, r"tune.b2 must be a non-empty list"),
    ({"learning_rate": 0.01, "b2": 0.9, "tune": {"b2": [0.9, 0.99]}}, r"b2 is also set to 0.9; set it in one place"),
    ({"learning_rate": 0.01, "tune": {"b2": ["x"]}}, r"tune.b2\[0\].b2 must be float"),
    ({"learning_rate": 0.01, "tune": {"schedule.warmup_steps": [-1]}}, r"warmup_steps\[0\] must be >= 0"),
  ],
)
def test_config_refusals(entry, match):
  with pytest.raises(config_lib.ConfigError, match=match):
    _parse([{"name": "adamw", **entry}])


# End to end: runs at the reported horizon, directory names, the table, and a rerun that trains nothing.


def _run(tmp_path_factory, entry, **changes):
  config = dataclasses.replace(_parse([entry]), **changes)
  out = tmp_path_factory.mktemp("tuning") / "out"
  return config, out, runner.run(config, out, progress=False)


@pytest.fixture(scope="module")
def extended(tmp_path_factory):
  """sgd at tiny learning rates, extend 2: the largest is best (the loss barely moves in 3 steps). 4 runs."""
  return _run(tmp_path_factory, {"name": "sgd", "learning_rate": {"grid": [0.0001, 0.0003], "extend": 2}})


@pytest.fixture(scope="module")
def product(tmp_path_factory):
  """adamw tuning b2 and the warmup, then trained to 2× the steps at its choice (the baseline): 5 runs."""
  return _run(
    tmp_path_factory,
    {"name": "adamw", "learning_rate": 0.01, "tune": {"b2": [0.9, 0.99], "schedule.warmup_steps": [0, 2]}},
    speedup_horizons=(1, 2),
  )


def test_edge_extension_trains_past_the_edge_and_flags_the_bound(extended):
  _, out, (sgd,) = extended
  dirs = sorted(p.name for p in (out / "runs" / "sgd").iterdir())
  # A half-decade grid continues 1, 3, 10, 30.
  assert dirs == ["lr_0.0001", "lr_0.0003", "lr_0.001", "lr_0.003"]
  assert sgd["learning_rate"] == 0.003
  assert sgd["tuning"] == {
    "learning_rates": [0.0001, 0.0003, 0.001, 0.003],
    "extend": 2,
    "extended": [0.001, 0.003],
    "at_edge": True,
  }
  assert [g["learning_rate"] for g in sgd["grid"]] == [0.0001, 0.0003, 0.001, 0.003]
  assert "tuned" not in sgd
  table = (out / "results.md").read_text()
  assert "| sgd | 0.003 (best of 4, grid extended by 2, best at the edge of the grid) |" in table
  assert "Best at the edge of the grid (sgd)" in table


def test_product_grid_names_each_point_and_reports_the_choice(product):
  _, out, (adamw,) = product
  dirs = sorted(p.name for p in (out / "runs" / "adamw").iterdir())
  assert dirs == [
    "lr_0.01-b2_0.9-warmup_steps_0",
    "lr_0.01-b2_0.9-warmup_steps_2",
    "lr_0.01-b2_0.99-warmup_steps_0",
    "lr_0.01-b2_0.99-warmup_steps_2",
  ]
  assert len(adamw["grid"]) == 4
  best = min(adamw["grid"], key=lambda g: g["final_val_loss"])
  assert adamw["tuned"] == {"b2": best["b2"], "schedule.warmup_steps": best["schedule.warmup_steps"]}
  assert adamw["final_val_loss"] == best["final_val_loss"]
  assert adamw["hyperparameters"]["b2"] == best["b2"] and "tuning" not in adamw
  assert adamw["hyperparameters"]["schedule"]["warmup_steps"] == best["schedule.warmup_steps"]
  # The warmup is a real option: another warmup, another loss.
  losses = {(g["b2"], g["schedule.warmup_steps"]): g["final_val_loss"] for g in adamw["grid"]}
  assert losses[(0.9, 0)] != losses[(0.9, 2)]
  # The baseline's longer horizon runs at the chosen point.
  point = f"lr_0.01-b2_{best['b2']:g}-warmup_steps_{best['schedule.warmup_steps']}"
  assert [h["runs"][0]["result"] for h in adamw["horizons"]] == [f"runs/adamw/{point}/seed_0/steps_6/result.json"]
  assert (out / adamw["horizons"][0]["runs"][0]["result"]).exists()
  tuned_cell = f"b2={best['b2']:g}, warmup_steps={best['schedule.warmup_steps']}"
  assert f"| adamw | 0.01 (best of 4) | {tuned_cell} |" in (out / "results.md").read_text()


def test_rerun_and_report_reuse_the_tuning_without_training(extended, monkeypatch, capsys):
  config, out, records = extended

  def refuse(*args, **kwargs):
    raise AssertionError("trained again")

  monkeypatch.setattr(runner.train, "train", refuse)
  assert runner.run(config, out, progress=False) == records
  assert cli.main(["report", str(out)]) == 0
  assert json.loads((out / "results.json").read_text()) == records
  assert "best at the edge of the grid" in capsys.readouterr().out


def test_yaml_syntax(tmp_path):
  path = tmp_path / "t.yaml"
  path.write_text(
    yaml.safe_dump(TINY) + "optimizers:\n"
    "  - {name: adamw, learning_rate: {grid: [0.003, 0.01], extend: 3}, tune: {b2: [0.95, 0.99]}}\n"
  )
  (spec,) = runner.load(path, ["optimizers.adamw.learning_rate.extend=1"]).optimizers
  assert (spec.learning_rates, spec.extend, dict(spec.tune)) == ((0.003, 0.01), 1, {"b2": (0.95, 0.99)})


def test_an_interrupted_grid_is_not_extended_until_it_finishes(tmp_path, monkeypatch):
  config = _parse([{"name": "sgd", "learning_rate": {"grid": [0.0001, 0.0003], "extend": 2}}])
  trained = []

  def ensure(job, spec, point, seed, out, bars, stop_after, steps=None):
    trained.append(point.learning_rate)
    return point.learning_rate != 0.0001 or stop_after is None  # stop_after: lr 0.0001 is cut short

  monkeypatch.setattr(runner, "_ensure", ensure)
  monkeypatch.setattr(
    runner.collect,
    "finished_runs",
    lambda out, name, lr, seeds, steps=None, tuned=(): {0: {"final_val_loss": -lr, "diverged": False}},
  )
  job, bars = runner._Job(config, None, None), runner._Progress(False)
  assert not runner._tune(job, config.optimizers[0], tmp_path, bars, stop_after=2)
  assert trained == [0.0001, 0.0003]  # the best so far is at the edge, but the grid is not finished
  trained.clear()
  assert runner._tune(job, config.optimizers[0], tmp_path, bars, stop_after=None)
  assert trained == [0.0001, 0.0003, 0.001, 0.003]


def test_a_changed_extend_resumes_the_same_directory(extended, tmp_path, monkeypatch):
  import shutil

  config, out, _ = extended
  copy = tmp_path / "out"
  shutil.copytree(out, copy)
  spec = config.optimizers[0]
  # One more extension allowed: only the next rate past the edge is trained.
  more = dataclasses.replace(config, optimizers=(dataclasses.replace(spec, extend=3),))
  (sgd,) = runner.run(more, copy, progress=False)
  assert sorted(p.name for p in (copy / "runs" / "sgd").iterdir()) == [
    "lr_0.0001",
    "lr_0.0003",
    "lr_0.001",
    "lr_0.003",
    "lr_0.01",
  ]
  assert sgd["tuning"]["extend"] == 3 and sgd["tuning"]["extended"] == [0.001, 0.003, 0.01]
  assert json.loads((copy / "config.json").read_text())["optimizers"][0]["learning_rate"]["extend"] == 3
  # No extension (a plain grid): nothing is trained, the choice is among the grid's own rates.
  monkeypatch.setattr(runner.train, "train", lambda *a, **k: pytest.fail("trained again"))
  (sgd,) = runner.run(
    dataclasses.replace(config, optimizers=(dataclasses.replace(spec, extend=0),)), copy, progress=False
  )
  assert sgd["learning_rate"] == 0.0003 and "tuning" not in sgd
  # Anything else about the runs is still a different config.
  other = dataclasses.replace(config, optimizers=(dataclasses.replace(spec, learning_rates=(0.0001, 0.001)),))
  with pytest.raises(config_lib.ConfigError, match="different config"):
    runner.run(other, copy, progress=False)
  # An added optimizer entry is accepted: the others' runs are reused (only
  # the new entry would train; its training is stubbed out here, so refused).
  added = dataclasses.replace(config, optimizers=(spec, dataclasses.replace(spec, name="sgd_again")))
  runner.prepare_out_dir(copy, added, overwrite=False)
  assert [o["name"] for o in json.loads((copy / "config.json").read_text())["optimizers"]] == ["sgd", "sgd_again"]
  # ... but dropping one changes what the directory holds.
  with pytest.raises(config_lib.ConfigError, match="different config"):
    runner.prepare_out_dir(copy, dataclasses.replace(config, optimizers=()), overwrite=False)
