"""``matopt run``: every optimizer of a config on one task, side by side.

Layout of the output directory::

    DIR/config.json              the effective config (resume refuses another)
    DIR/runs/NAME/lr_X/          one run: checkpoints/, result.json when done
    DIR/results.json             one record per optimizer (best of its grid)
    DIR/results.md               the comparison table
    DIR/loss_vs_step.png, DIR/loss_vs_time.png
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matopt.experiments import config as config_lib
from matopt.experiments import optimizers as optimizers_lib
from matopt.experiments import parallel, report, tasks, train
from matopt.experiments.config import Config, ConfigError


def load(path: str | Path, overrides: Sequence[str] = ()) -> Config:
  """Read a config, apply ``--set`` overrides (``optimizers.0.learning_rate=0.02``,
  :func:`matopt.experiments.config.apply_override`) and check it against the
  optimizer catalogue and the tasks."""
  return config_lib.load(path, overrides=overrides, catalogue=optimizers_lib.CATALOGUE, tasks=tasks.TASKS)


def override(config: Config, *, steps: int | None = None, seed: int | None = None,
             optimizers: Sequence[str] | None = None) -> Config:
  """The config with command-line overrides applied (checked like the file)."""
  changes: dict[str, Any] = {}
  if steps is not None:
    config_lib.check_positive("--steps", steps)
    changes["steps"] = steps
  if seed is not None:
    changes["seed"] = seed
  if optimizers is not None:
    known = [s.name for s in config.optimizers]
    unknown = [n for n in optimizers if n not in known]
    if unknown or not optimizers:
      raise ConfigError(f"--optimizers: {unknown or 'none'} not in this config; its optimizers are {known}.")
    changes["optimizers"] = tuple(s for s in config.optimizers if s.name in optimizers)
  return dataclasses.replace(config, **changes)


def _lr_dir(lr: float) -> str:
  return f"lr_{lr:.6g}"


def _check_out_dir(out: Path, config: Config, overwrite: bool) -> None:
  """An output directory belongs to one config; finished and checkpointed
  runs in it are reused, so a different config there is refused."""
  path = out / "config.json"
  want = json.loads(json.dumps(config_lib.to_dict(config)))
  if path.exists() and not overwrite:
    have = json.loads(path.read_text())
    if have != want:
      changed = sorted(k for k in set(have) | set(want) if have.get(k) != want.get(k))
      raise ConfigError(
          f"{out} holds runs of a different config (differs in {changed}); pass --out with a new "
          "directory, or --overwrite to discard them.")
  if overwrite and out.exists():
    import shutil

    for child in ("runs", "config.json", "results.json", "results.md", "loss_vs_step.png", "loss_vs_time.png"):
      target = out / child
      if target.is_dir():
        shutil.rmtree(target)
      elif target.exists():
        target.unlink()
  out.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(want, indent=2) + "\n")


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

      self.bar = Progress(TextColumn("{task.description:<28}"), BarColumn(), MofNCompleteColumn(),
                          TextColumn("loss (last step) {task.fields[loss]:.4f}"), TimeElapsedColumn())

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

  def build(self, spec: config_lib.OptimizerSpec, lr: float) -> Any:
    return optimizers_lib.build(spec.optimizer, lr, spec.options, schedule=self.config.schedule,
                                steps=self.config.steps, model_options=self.task.model_options())

  def train(self, spec: config_lib.OptimizerSpec, lr: float, run_dir: Path, bars: _Progress,
            stop_after: int | None) -> dict[str, Any]:
    config = self.config
    label = spec.name + (f" lr={lr:g}" if len(spec.learning_rates) > 1 else "")
    return train.train(
        self.task, self.build(spec, lr), steps=config.steps, seed=config.seed, eval_every=config.eval_every,
        checkpoint_every=config.checkpoint_every, run_dir=run_dir, on_step=bars.start(label, config.steps),
        stop_after=stop_after, mesh=self.mesh, update_args=self.entry(spec).update_args)


def _grid(job: _Job, spec: config_lib.OptimizerSpec, out: Path, bars: _Progress,
          stop_after: int | None) -> list[tuple[float, dict]]:
  """``(lr, result)`` for each learning rate of ``spec`` that finished (reused or trained now)."""
  grid = []
  for lr in spec.learning_rates:
    run_dir = out / "runs" / spec.name / _lr_dir(lr)
    done = run_dir / "result.json"
    if not done.exists():
      run_dir.mkdir(parents=True, exist_ok=True)
      result = job.train(spec, lr, run_dir, bars, stop_after)
      if not result["complete"]:
        continue
      report.write_json(done, result)
    grid.append((lr, json.loads(done.read_text())))  # one form (nulls for inf) whether fresh or reused
  return grid


def run(
    config: Config,
    out: str | Path,
    *,
    overwrite: bool = False,
    progress: bool = True,
    stop_after: int | None = None,
) -> list[dict[str, Any]]:
  """Train every optimizer (and learning rate of its grid) of ``config``.

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
    The records written to ``results.json`` (one per optimizer).
  """
  out = Path(out)
  config_lib.check_update_args(config, optimizers_lib.CATALOGUE, tasks.TASKS)  # a config built in Python too
  job = _Job(config, tasks.TASKS[config.task](config),
             parallel.make_mesh(config.mesh) if config.mesh is not None else None)
  for spec in config.optimizers:
    for lr in spec.learning_rates:
      job.build(spec, lr)
  _check_out_dir(out, config, overwrite)
  records, curves = [], []
  with _Progress(progress) as bars:
    for spec in config.optimizers:
      grid = _grid(job, spec, out, bars, stop_after)
      if len(grid) != len(spec.learning_rates):
        continue
      lr, best = min(grid, key=lambda g: _key(g[1]))
      rates = {k: float(v) for k, v in spec.options.items()  # for the plots' legends
               if k in job.entry(spec).rates and v is not None}
      curves.append(report.Curve(spec.name, spec.optimizer, lr, rates, best["history"]))
      records.append(_record(spec, lr, best, grid, job))
  if len(records) == len(config.optimizers):  # else interrupted: the next call resumes
    _write(out, records, curves, job)
  return records


def _write(out: Path, records: list[dict], curves: list[report.Curve], job: _Job) -> None:
  config, task = job.config, job.task
  report.write_json(out / "results.json", records)
  (out / "results.md").write_text(report.markdown(
      records, config_name=config.name, task=config.task, unit=task.unit, loss_unit=task.loss_unit,
      info=report.machine(), metrics=task.metric_names))
  report.plots(curves, out, title=f"{config.name}: {config.task}", loss_unit=task.loss_unit)


def _key(result: dict) -> float:
  loss = result["final_val_loss"]
  return float("inf") if loss is None or result["diverged"] else loss


def _record(spec, lr: float, best: dict, grid: list, job: _Job) -> dict[str, Any]:
  task, config = job.task, job.config
  val_loss = best["final_val_loss"]
  metrics = task.metrics(val_loss, best["final_val_aux"]) if val_loss is not None else {}
  # What the optimizer's update arguments peaked at (final_max_logit for QK-clip).
  reported = [f"final_{task.update_args[a]}" for a in job.entry(spec).update_args]
  return {
      "optimizer": spec.name,
      "factory": spec.optimizer,
      "learning_rate": lr,
      "final_train_loss": best["final_train_loss"],
      "final_val_loss": val_loss,
      **metrics,
      "steps": best["steps"],
      "wall_seconds": best["wall_seconds"],
      "train_seconds": best["train_seconds"],
      "throughput": best["units_per_second"],
      "throughput_unit": f"{task.unit}/s",
      "diverged": best["diverged"],
      **{key: best[key] for key in reported if key in best},
      "hyperparameters": {"learning_rate": lr, **dict(spec.options),
                          "schedule": dataclasses.asdict(config.schedule)},
      "grid": [{"learning_rate": g_lr, "final_val_loss": r["final_val_loss"],
                "final_train_loss": r["final_train_loss"], "diverged": r["diverged"]} for g_lr, r in grid],
  }
