"""``matopt run``: every optimizer of a config on one task, side by side.

Layout of the output directory::

    DIR/config.json              the effective config (resume refuses another)
    DIR/meta.json                the task's units and metrics, the machine, legend rates
    DIR/runs/NAME/lr_X/seed_S/   one run: checkpoints/, metrics.jsonl as it trains, result.json when done
    DIR/runs/NAME/lr_X-K_V/seed_S/  the same at a point of a grid that also tunes option K (``tune:``)
    DIR/runs/B/lr_X/seed_S/steps_N/  the baseline B trained to N steps (speedup_horizons)
    DIR/results.json             one record per optimizer (best of its grid, over seeds)
    DIR/results.md               the comparison table
    DIR/loss_vs_step.png, DIR/loss_vs_time.png

Every optimizer runs each learning rate of its grid with each seed (the
seed sets both the initialisation and the order of training batches), with
each combination of the values of the options it tunes (``tune:``); a grid
with ``extend`` grows past its edge while the best lies there
(:mod:`matopt.experiments.tuning`). Then
the baseline (``baseline:``, default ``adamw``) is trained again at its
chosen learning rate, every seed, to each multiple of ``steps`` in
``speedup_horizons`` above 1, with its learning-rate schedule stretched to
that length (warmup steps unchanged), for the equivalent-data speedups.
results.json, results.md and the plots are then written from the runs'
result.json files alone (:func:`matopt.experiments.report.render`), as
``matopt report DIR`` does.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matopt.experiments import collect, parallel, processes, report, tasks, train, trends, tuning
from matopt.experiments import config as config_lib
from matopt.experiments import optimizers as optimizers_lib
from matopt.experiments.config import Config, ConfigError


def load(path: str | Path, overrides: Sequence[str] = (), *, check_devices: bool = True) -> Config:
  """Read a config, apply ``--set`` overrides (``optimizers.0.learning_rate=0.02``,
  :func:`matopt.experiments.config.apply_override`) and check it against the
  optimizer catalogue and the tasks (and, with ``check_devices``, its mesh
  against the devices JAX sees)."""
  return config_lib.load(
    path, overrides=overrides, catalogue=optimizers_lib.CATALOGUE, tasks=tasks.TASKS, check_devices=check_devices
  )


def override(
  config: Config,
  *,
  steps: int | None = None,
  seed: int | None = None,
  seeds: int | None = None,
  optimizers: Sequence[str] | None = None,
) -> Config:
  """The config with command-line overrides applied (checked like the file).

  ``seeds`` (``--seeds N``) runs the seeds ``seed, seed + 1, ..., seed + N - 1``
  (``seed`` the one given, else the config's first seed); ``seed`` alone
  (``--seed``) replaces the config's seeds by that one.
  """
  changes: dict[str, Any] = {}
  if steps is not None:
    config_lib.check_positive("--steps", steps)
    changes["steps"] = steps
    if config.sizes is not None:  # every size trains `steps`, whatever its parameter count
      changes["sizes"] = dataclasses.replace(config.sizes, tokens_per_param=None)
  if seed is not None:
    changes.update(seed=seed, seeds=None)
  if seeds is not None:
    config_lib.check_positive("--seeds", seeds)
    first = seed if seed is not None else config.run_seeds[0]
    changes.update(seed=first, seeds=tuple(range(first, first + seeds)) if seeds > 1 else None)
  if optimizers is not None:
    known = [s.name for s in config.optimizers]
    unknown = [n for n in optimizers if n not in known]
    if unknown or not optimizers:
      raise ConfigError(f"--optimizers: {unknown or 'none'} not in this config; its optimizers are {known}.")
    changes["optimizers"] = tuple(s for s in config.optimizers if s.name in optimizers)
  config = dataclasses.replace(config, **changes)
  config_lib.check_seeds_and_baseline(config)
  return config


def _without_extend(config: Any) -> Any:
  """A config.json without its grids' ``extend``: a bound on how many runs a grid adds, not what a run is."""
  if isinstance(config, dict):
    kept = {k: _without_extend(v) for k, v in config.items() if k != "extend"}
    return kept["grid"] if set(kept) == {"grid"} else kept  # extend: 0 writes the grid as a plain list
  if isinstance(config, list):
    return [_without_extend(v) for v in config]
  return config


def _same_runs(have: dict, want: dict) -> bool:
  """Whether the runs ``have`` (an output directory's config.json) describes
  are runs of ``want``: equal but for grids' ``extend`` and for optimizer
  entries ``want`` adds (each entry's runs live in their own directory)."""
  have, want = _without_extend(have), _without_extend(want)
  entries = lambda c: {o["name"]: o for o in c.get("optimizers", [])}
  rest = lambda c: {k: v for k, v in c.items() if k != "optimizers"}
  return rest(have) == rest(want) and all(entries(want).get(n) == o for n, o in entries(have).items())


def prepare_out_dir(out: Path, config: Config, overwrite: bool) -> None:
  """An output directory belongs to one config; finished and checkpointed
  runs in it are reused, so a different config there is refused. A grid's
  ``extend`` may change: the runs it bounds stay what they were, and the
  search re-derives the extension from them. Optimizer entries may be
  added: the others' runs are reused as they are."""
  want = json.loads(json.dumps(config_lib.to_dict(config)))
  # Every process checks (so each raises the same error); process 0 writes.
  _check_out_dir(out, want, overwrite)
  processes.barrier(f"checked {out}")  # no process reads config.json while process 0 rewrites it
  processes.on_main(_write_out_dir, out, want, overwrite, name=f"prepared {out}")


def _check_out_dir(out: Path, want: dict, overwrite: bool) -> None:
  path = out / "config.json"
  if path.exists() and not overwrite:
    have = json.loads(path.read_text())
    if not _same_runs(have, want):
      changed = sorted(k for k in set(have) | set(want) if have.get(k) != want.get(k))
      raise ConfigError(
        f"{out} holds runs of a different config (differs in {changed}); pass --out with a new "
        "directory, or --overwrite to discard them."
      )


def _write_out_dir(out: Path, want: dict, overwrite: bool) -> None:
  if overwrite and out.exists():
    import shutil

    for child in (
      "runs",
      "sizes",
      "config.json",
      "meta.json",
      "results.json",
      "results.md",
      "loss_vs_step.png",
      "loss_vs_time.png",
      *trends.FILES,
    ):
      target = out / child
      if target.is_dir():
        shutil.rmtree(target)
      elif target.exists():
        target.unlink()
  out.mkdir(parents=True, exist_ok=True)
  (out / "config.json").write_text(json.dumps(want, indent=2) + "\n")


class _Progress:
  """A rich progress bar per run, quiet when asked.

  The bar shows the last step's training loss (noisy); the results table's
  train loss is the mean of the last 10 steps, so each says which it is.
  """

  def __init__(self, enabled: bool):
    self.enabled = enabled
    if enabled:
      from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
      )

      self.bar = Progress(
        TextColumn("{task.description:<28}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss (last step) {task.fields[loss]:.4f}"),
        TimeElapsedColumn(),
      )

  def __enter__(self):
    if self.enabled:
      self.bar.__enter__()
    return self

  def __exit__(self, *exc):
    if self.enabled:
      self.bar.__exit__(*exc)

  def start(self, description: str, total: int, done: int = 0):
    if not self.enabled:
      return None
    task_id = self.bar.add_task(description, total=total, completed=done, loss=float("nan"))
    return lambda step, loss: self.bar.update(task_id, completed=step, loss=loss)


@dataclasses.dataclass(frozen=True)
class _Job:
  """What every run of a config shares: the config, its task, mesh and optimizers."""

  config: Config
  task: tasks.Task
  mesh: Any

  def entry(self, spec: config_lib.OptimizerSpec) -> optimizers_lib.Entry:
    return optimizers_lib.CATALOGUE[spec.optimizer]

  def build(self, spec: config_lib.OptimizerSpec, point: tuning.Point, steps: int | None = None) -> Any:
    """The optimizer at a grid point; its schedule spans ``steps`` (default the config's)."""
    schedule = self.config.schedule
    if point.warmup_steps() is not None:
      schedule = dataclasses.replace(schedule, warmup_steps=point.warmup_steps())
    return optimizers_lib.build(
      spec.optimizer,
      point.learning_rate,
      {**spec.options, **point.options()},
      schedule=schedule,
      steps=steps or self.config.steps,
      model_options=self.task.model_options(),
    )

  def train(
    self,
    spec: config_lib.OptimizerSpec,
    point: tuning.Point,
    seed: int,
    run_dir: Path,
    bars: _Progress,
    stop_after: int | None,
    steps: int | None = None,
  ) -> dict[str, Any]:
    config, steps, lr = self.config, steps or self.config.steps, point.learning_rate
    label = spec.name + (f" lr={lr:g}" if len(spec.learning_rates) > 1 or spec.extend else "")
    label += "".join(f" {k.removeprefix('schedule.')}={v}" for k, v in point.tuned)
    label += f" seed={seed}" if len(config.run_seeds) > 1 else ""
    label += f" {steps} steps" if steps != config.steps else ""
    result = train.train(
      self.task,
      self.build(spec, point, steps),
      steps=steps,
      seed=seed,
      eval_every=config.eval_every,
      checkpoint_every=config.checkpoint_every,
      run_dir=run_dir,
      on_step=bars.start(label, steps),
      stop_after=stop_after,
      mesh=self.mesh,
      update_args=self.entry(spec).update_args,
      sampled_stats=self.entry(spec).sampling({**spec.options, **point.options()}),
    )
    val_loss = result["final_val_loss"]
    result["metrics"] = self.task.metrics(val_loss, result["final_val_aux"]) if math.isfinite(val_loss) else {}
    return {"seed": seed, "learning_rate": lr, **result}


def _ensure(
  job: _Job,
  spec: config_lib.OptimizerSpec,
  point: tuning.Point,
  seed: int,
  out: Path,
  bars: _Progress,
  stop_after: int | None,
  steps: int | None = None,
) -> bool:
  """Train one run unless its result.json exists; whether it is finished now."""
  run_dir = out / collect.run_path(spec.name, point.learning_rate, seed, steps, point.tuned)
  done = run_dir / "result.json"
  if done.exists():
    return True
  run_dir.mkdir(parents=True, exist_ok=True)
  result = job.train(spec, point, seed, run_dir, bars, stop_after, steps)
  if result["complete"]:  # the next decisions read it, in every process
    processes.on_main(collect.write_json, done, result, name=f"finished {run_dir}")
  return result["complete"]


def _horizons(job: _Job, out: Path, bars: _Progress, stop_after: int | None) -> bool:
  """The baseline at its chosen learning rate, every seed, at each longer horizon; whether all finished."""
  config = job.config
  spec = next(s for s in config.optimizers if s.name == config.baseline_name)
  best = collect.search(out, config_lib.to_dict(config), spec.name).best
  complete = True
  for factor in config.speedup_horizons:
    if factor != 1:
      for seed in config.run_seeds:
        complete &= _ensure(job, spec, best, seed, out, bars, stop_after, factor * config.steps)
  return complete


def _tune(job: _Job, spec: config_lib.OptimizerSpec, out: Path, bars: _Progress, stop_after: int | None) -> bool:
  """Every seed of every point of the entry's grid, extended past an edge as asked; whether all finished.

  A point counts for the search only once all its seeds finished, so an
  interrupted run extends nothing until it resumes.
  """
  grid, complete = tuning.of_entry(config_lib.entry_dict(spec)), True
  start = set(grid.points())

  def fetch(point: tuning.Point) -> dict[int, dict]:
    nonlocal complete
    if not complete and point not in start:
      return {}  # extend only from a finished grid
    finished = [_ensure(job, spec, point, seed, out, bars, stop_after) for seed in job.config.run_seeds]
    done = all(finished)  # every seed trained (or resumed) first, as without a grid
    complete &= done
    return (
      collect.finished_runs(out, spec.name, point.learning_rate, job.config.run_seeds, tuned=point.tuned)
      if done
      else {}
    )

  tuning.search(grid, fetch)
  return complete


def run(
  config: Config,
  out: str | Path,
  *,
  overwrite: bool = False,
  progress: bool = True,
  stop_after: int | None = None,
) -> list[dict[str, Any]]:
  """Train every optimizer (each learning rate of its grid, each seed) of ``config``.

  Everything that can be checked is checked first: the task's data loads and
  every optimizer is built before the first step. Finished runs found in
  ``out`` are reused and checkpointed ones continue.

  Args:
    config: a checked config (:func:`load`, :func:`override`).
    out: output directory.
    overwrite: discard what ``out`` holds instead of resuming.
    progress: show progress bars.
    stop_after: stop every run after this many steps (checkpointed), as an
      interrupted job would; results are then not written.

  Returns:
    The records written to ``results.json`` (one per optimizer), or none
    when a run was interrupted (the next call resumes).
  """
  if config.sizes is not None:
    from matopt.experiments import sizes  # it runs each size through this function

    return sizes.run(config, out, overwrite=overwrite, progress=progress, stop_after=stop_after)
  out = Path(out)
  config_lib.check_update_args(config, optimizers_lib.CATALOGUE, tasks.TASKS)  # a config built in Python too
  config_lib.check_seeds_and_baseline(config)
  job = _Job(
    config, tasks.TASKS[config.task](config), parallel.make_mesh(config.mesh) if config.mesh is not None else None
  )
  for spec in config.optimizers:
    for point in tuning.of_entry(config_lib.entry_dict(spec)).points():
      job.build(spec, point)
  prepare_out_dir(out, config, overwrite)
  processes.on_main(_write_meta, out, job, name=f"meta {out}")
  complete = True
  with _Progress(progress and processes.is_main()) as bars:
    for spec in config.optimizers:
      complete &= _tune(job, spec, out, bars, stop_after)
    if complete and len(config.speedup_horizons) > 1:
      complete = _horizons(job, out, bars, stop_after)
  if not complete:
    return []
  processes.on_main(report.render, out, name=f"results {out}")
  return collect.read_json(out / "results.json")  # what render returns, in every process


def _write_meta(out: Path, job: _Job) -> None:
  """What rendering needs of the task and the machine without building them (``matopt report``)."""
  task = job.task
  rates = {
    spec.name: {
      "rates": {
        k: float(v)
        for k, v in spec.options.items()  # for the plots' legends
        if k in job.entry(spec).rates and v is not None
      }
    }
    for spec in job.config.optimizers
  }
  collect.write_json(
    out / "meta.json",
    {
      "unit": task.unit,
      "loss_unit": task.loss_unit,
      "metric_names": list(task.metric_names),
      "machine": collect.machine(),
      "optimizers": rates,
    },
  )
