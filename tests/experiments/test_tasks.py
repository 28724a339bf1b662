"""Tasks reject data settings they cannot serve, before any step, saying which setting to change."""

import dataclasses

import jax
import pytest
from flax import nnx

from matopt.experiments import config as config_lib
from matopt.experiments import optimizers, tasks

BASE = {
  "steps": 2,
  "batch_size": 2,
  "eval_batches": 1,
  "optimizers": [{"name": "adamw", "learning_rate": 1e-3}],
}


def _config(**raw):
  return config_lib.parse({**BASE, **raw}, catalogue=optimizers.CATALOGUE, tasks=tasks.TASKS)


def test_corpus_shorter_than_a_window():
  config = _config(
    task="gpt", model={"layers": 1, "width": 16, "heads": 2, "seq_len": 64}, data={"max_bytes": 60, "val_percent": 10}
  )
  with pytest.raises(
    config_lib.ConfigError, match=r"corpus has \d+ bytes, fewer than seq_len \+ 1; raise data.max_bytes"
  ):
    tasks.TASKS["gpt"](config)


def test_more_eval_batches_than_validation_images():
  config = dataclasses.replace(_config(task="digits", data={"val_percent": 1}), eval_batches=100)
  with pytest.raises(
    config_lib.ConfigError, match=r"config.eval_batches 100 exceeds the 17 validation images; lower it"
  ):
    tasks.TASKS["digits"](config)


@pytest.mark.parametrize("name", sorted(tasks.TASKS))
def test_every_task_is_a_task(name):
  # What the runner reads of a task and nothing more: the Protocol, checked on a real instance.
  raw = {
    "task": name,
    "model": {"layers": 1, "width": 16, "heads": 2, "seq_len": 8} if name == "gpt" else {},
    "data": {"max_bytes": 20_000, "val_percent": 10} if name == "gpt" else {},
  }
  task = tasks.TASKS[name](_config(**raw))
  assert isinstance(task, tasks.Task)
  val_loss, val_aux = 2.0, 0.5
  assert tuple(task.metrics(val_loss, val_aux)) == task.metric_names
  # Every update argument a task offers is reported by its model under that name.
  for arg in task.update_args:
    model = task.make_model(0, report=(arg,))
    batch = jax.tree.map(lambda x: x[0], task.val_batches())
    (_, _), sown = nnx.capture(task.loss, nnx.Intermediate)(model, batch)
    assert arg in str(nnx.to_pure_dict(sown))
  options = task.model_options()
  assert options["recipe"] == {"gpt": "language", "digits": "image"}[name]
