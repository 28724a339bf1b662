"""A sweep over model sizes (``sizes:`` in a config): one whole experiment per size.

Each value of ``sizes.key`` (``model.width``) gives a config of its own,
the base config with that model key set, trained by
:func:`matopt.experiments.runner.run` into ``DIR/sizes/FIELD_VALUE/``, so a
size is an ordinary output directory (``matopt report DIR/sizes/width_64``
works on it) with its own tuning, seeds and baseline horizons. With
``tokens_per_param`` each size's steps follow its parameter count, so the
data grows with the model at a fixed ratio; the warmup and the evaluation
interval keep their ratio to the config's ``steps``.

The trends across sizes (speedup against parameters, the learning-rate
curves by size) are read back by :mod:`matopt.experiments.trends`.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import jax
from flax import nnx

from matopt.experiments import collect, processes, runner, tasks, trends
from matopt.experiments.config import Config


def count_params(task: tasks.Task, seed: int) -> int:
  """The number of trainable parameters of ``task``'s model (shapes only, nothing allocated)."""
  model = nnx.eval_shape(lambda: task.make_model(seed))
  return sum(math.prod(x.shape) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def _scaled(value: int, ratio: float) -> int:
  return max(1, round(value * ratio)) if value else 0


def derive(config: Config, value: Any) -> tuple[Config, dict[str, Any]]:
  """The config of one size, and what the size is (value, parameters, steps, units).

  The size's config is ``config`` without ``sizes``, with ``model.FIELD =
  value``; with ``tokens_per_param``, its ``steps`` are ``round(tokens_per_param
  * params / units_per_step)`` and its warmup and ``eval_every`` scale with them.
  """
  sizes = config.sizes
  assert sizes is not None
  derived = dataclasses.replace(config, sizes=None, model={**config.model, sizes.field: value})
  task = tasks.TASKS[derived.task](derived)
  params = count_params(task, derived.run_seeds[0])
  if sizes.tokens_per_param is not None:
    steps = max(1, round(sizes.tokens_per_param * params / task.units_per_step))
    ratio = steps / config.steps
    schedule = dataclasses.replace(config.schedule, warmup_steps=_scaled(config.schedule.warmup_steps, ratio))
    derived = dataclasses.replace(
      derived,
      steps=steps,
      schedule=schedule,
      eval_every=_scaled(config.eval_every, ratio),
      checkpoint_every=_scaled(config.checkpoint_every, ratio),
    )
  info = {
    "key": sizes.key,
    "value": value,
    "dir": f"sizes/{sizes.name(value)}",
    "params": params,
    "steps": derived.steps,
    "units": derived.steps * task.units_per_step,
  }
  return derived, info


def run(
  config: Config, out: str | Path, *, overwrite: bool = False, progress: bool = True, stop_after: int | None = None
) -> list[dict[str, Any]]:
  """Run every size of ``config`` (:func:`derive`) into ``out/sizes/``; render the trends.

  Returns:
    :func:`matopt.experiments.trends.render`'s records (one per size), or none
    when a run was interrupted (the next call resumes).
  """
  out = Path(out)
  derived = [derive(config, value) for value in config.sizes.values]  # every size checked before training
  runner.prepare_out_dir(out, config, overwrite)
  task = tasks.TASKS[config.task]
  meta = {"unit": task.unit, "loss_unit": task.loss_unit, "machine": collect.machine()}
  processes.on_main(
    collect.write_json, out / "meta.json", {**meta, "sizes": [info for _, info in derived]}, name=f"meta {out}"
  )
  complete = True
  for size_config, info in derived:
    complete &= bool(
      runner.run(size_config, out / info["dir"], overwrite=overwrite, progress=progress, stop_after=stop_after)
    )
  if not complete:
    return []
  processes.on_main(trends.render, out, rerender_sizes=False, name=f"trends {out}")  # each size rendered already
  return collect.read_json(out / "trends.json")["sizes"]  # what render returns, in every process
