"""``shampoo_gn`` and ``soap_gn`` in ``matopt run``: statistics from labels sampled by the model."""

import json
from typing import ClassVar

import jax
import numpy as np
import optax
import pytest
from flax import nnx

from matopt.experiments import collect, optimizers, runner, tasks, train
from matopt.experiments import config as config_lib
from matopt.experiments.config import ConfigError, Schedule

TINY = {
  "task": "gpt",
  "steps": 6,
  "batch_size": 4,
  "eval_batches": 1,
  "model": {"layers": 1, "width": 16, "heads": 2, "seq_len": 16},
  "data": {"max_bytes": 50_000, "val_percent": 10},
  "optimizers": [
    {"name": "shampoo_gn", "learning_rate": 0.01, "gn_fraction": 0.5},
    {"name": "soap_gn", "learning_rate": 0.01, "gn_samples": 2},
  ],
}


def _parse(raw, task_classes=tasks.TASKS):
  return config_lib.parse(raw, catalogue=optimizers.CATALOGUE, tasks=task_classes)


def _history(out, name, lr):
  return json.loads((out / collect.run_path(name, lr, 0, None, ()) / "result.json").read_text())["history"]


DIGITS = {
  "task": "digits",
  "steps": 6,
  "batch_size": 32,
  "eval_batches": 1,
  "model": {"width": 16, "layers": 1},
  "optimizers": [{"name": "soap_gn", "learning_rate": 0.03, "gn_samples": 2, "gn_fraction": 0.5}],
}


def test_a_soap_gn_run_learns_and_resumed_equals_uninterrupted(tmp_path):
  # Through the runner (the entry's gn_* options reach the step), on digits:
  # a task with logits of shape (batch, classes) rather than GPT's (batch, tokens, classes).
  whole = tmp_path / "whole"
  (record,) = runner.run(_parse(DIGITS), whole, progress=False)
  assert record["hyperparameters"]["gn_samples"] == 2 and record["hyperparameters"]["gn_fraction"] == 0.5
  expected = _history(whole, "soap_gn", 0.03)
  losses = [h[2] for h in expected["train"]]
  assert len(losses) == 6 and np.mean(losses[-2:]) < losses[0] - 0.2, losses  # it learns
  # Stopped after 3 steps (checkpoint at 2), then resumed: the sampled labels
  # are a function of (seed, step), so the losses are those of the run above.
  halves = tmp_path / "halves"
  resumable = _parse({**DIGITS, "checkpoint_every": 2})
  assert runner.run(resumable, halves, progress=False, stop_after=3) == []
  runner.run(resumable, halves, progress=False)
  resumed = _history(halves, "soap_gn", 0.03)
  assert [h[2] for h in resumed["train"]] == losses
  assert resumed["val"][-1][2:] == expected["val"][-1][2:]


def _recording(tx):
  """``tx`` that also keeps the last gradient and statistics' gradient it was given in its state."""

  def init(params):
    return tx.init(params), params, params

  def update(grads, state, params=None, *, stats_grads=None):
    updates, inner = tx.update(grads, state[0], params, stats_grads=stats_grads)
    return updates, (inner, grads, grads if stats_grads is None else stats_grads)

  return optax.GradientTransformationExtraArgs(init, update)


def test_the_gn_step_steps_with_the_gradient_and_takes_statistics_from_sampled_labels():
  task = tasks.GPTTask(_parse(TINY))
  graphdef, params, rest = nnx.split(task.make_model(0), nnx.Param, ...)
  batch = task.train_batch(0, 0)
  entry = optimizers.CATALOGUE["shampoo_gn"]
  assert entry.sampling({"gn_fraction": 0.5}) == {"num_samples": 1, "fraction": 0.5}
  assert optimizers.CATALOGUE["shampoo"].sampling({}) is None
  out = {}
  for name, sampling in (("shampoo", None), ("shampoo_gn", entry.sampling({}))):
    tx = _recording(optimizers.build(name, 0.01, {}, schedule=Schedule(), steps=6))
    step = train.make_step(task, tx, graphdef, rest, sampled_stats=sampling, seed=0)
    out[name] = [step.train(params, tx.init(params), batch, np.int32(i)) for i in (0, 0, 1)]
  ((_, plain, (plain_loss, _)),) = out["shampoo"][:1]
  (first, gn, (gn_loss, _)), again, later = out["shampoo_gn"]
  # The same loss (mean cross-entropy) and gradient to step with ...
  np.testing.assert_allclose(gn_loss, plain_loss, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7), gn[1], plain[1])
  # ... but Shampoo's statistics come from the sampled labels' gradient.
  assert not np.allclose(_flat(gn[2]), _flat(gn[1]), rtol=0.1)
  # (At initialisation only the head has a gradient: the GPT's output layers start at zero.)
  pairs = [(a, b) for a, b in zip(_stats_left(gn[0]), _stats_left(plain[0])) if np.any(b != 0)]
  assert pairs and all(not np.allclose(a, b, rtol=0.1) for a, b in pairs)
  # The key is a function of the step alone: step 0 again draws the same labels, step 1 others.
  jax.tree.map(np.testing.assert_array_equal, again[1][2], gn[2])
  assert not np.allclose(_flat(later[1][2]), _flat(gn[2]), rtol=0.1)
  # Shampoo with these statistics trains the GPT (the compiled step, five more batches).
  params, state, losses = first, gn, [float(gn_loss)]
  for i in range(1, 6):
    params, state, (loss, _) = step.train(params, state, task.train_batch(i, 0), np.int32(i))
    losses.append(float(loss))
  assert np.all(np.isfinite(losses)) and np.mean(losses[-2:]) < losses[0] - 0.1, losses


def _flat(tree):
  return np.concatenate([np.ravel(x) for x in jax.tree.leaves(tree)])


def _stats_left(state):
  """The Shampoo state's left statistics, leaf by leaf."""
  found = [s for s in jax.tree.leaves(state, is_leaf=lambda s: hasattr(s, "stats_left")) if hasattr(s, "stats_left")]
  assert len(found) == 1
  return [np.asarray(x) for x in jax.tree.leaves(found[0].stats_left)]


@pytest.mark.parametrize(
  "options, message",
  [
    ({"gn_samples": 0}, r"optimizers\[0\].gn_samples must be a positive int .*got 0"),
    ({"gn_samples": 1.5}, r"optimizers\[0\].gn_samples must be int"),
    ({"gn_fraction": 0.0}, r"optimizers\[0\].gn_fraction must lie in \(0, 1\] .*got 0.0"),
    ({"gn_fraction": 1.5}, r"gn_fraction must lie in \(0, 1\]"),
    ({"gn_fraction": "half"}, r"gn_fraction must be float"),
    ({"tune": {"gn_fraction": [0.5, 2.0]}}, r"tune.gn_fraction\[1\].gn_fraction must lie in \(0, 1\]"),
    ({"optimizer": "shampoo", "gn_samples": 2}, r"unknown option\(s\) \['gn_samples'\]"),
  ],
)
def test_bad_sampling_options_are_config_errors(options, message):
  with pytest.raises(ConfigError, match=message):
    _parse({**TINY, "optimizers": [{"name": "shampoo_gn", "learning_rate": 0.01, **options}]})


def test_sampling_options_are_tunable_and_not_factory_options():
  spec = _parse(
    {**TINY, "optimizers": [{"name": "soap_gn", "learning_rate": 0.01, "b1": 0.9, "tune": {"gn_fraction": [0.5, 1.0]}}]}
  ).optimizers[0]
  assert spec.tune == {"gn_fraction": (0.5, 1.0)} and spec.options == {"b1": 0.9}
  entry = optimizers.CATALOGUE["soap_gn"]
  assert set(entry.options) == set(optimizers.CATALOGUE["soap"].options) | {"gn_samples", "gn_fraction"}
  assert entry.kwargs({"b1": 0.9, "gn_samples": 2}) == {"b1": 0.9}
  assert entry.factory is optimizers.CATALOGUE["soap"].factory


def test_a_task_without_logits_refuses_gn_at_load_time():
  class NoLogits:
    update_args: ClassVar[dict[str, str]] = {}
    check = staticmethod(tasks.GPTTask.check)

  with pytest.raises(
    ConfigError,
    match=r"optimizers\[0\]: shampoo_gn samples labels .* 'gpt' task cannot supply"
    r" .*use shampoo there",
  ):
    _parse({**TINY, "optimizers": TINY["optimizers"][:1]}, {"gpt": NoLogits})
  _parse({**TINY, "optimizers": [{"name": "shampoo", "learning_rate": 0.01}]}, {"gpt": NoLogits})
