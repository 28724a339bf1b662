"""One training run: a task, an optimizer, a learning rate; checkpointed.

:func:`train` is three parts: :func:`make_step` (one ``jax.jit`` of loss,
gradient and optimizer update over the model's ``nnx.Param`` state, split
once, so no graph traversal per step), :class:`Checkpoints` (restore and
save) and the loop. An optimizer whose ``update`` needs more than
``(grads, state, params)`` names those arguments (``update_args``, e.g.
QK-clip's ``max_logits``); the task's model reports them
(:class:`matopt.experiments.tasks.Task`) and the step hands them over, and
records each one's largest value per step in the history. An optimizer
with Gauss–Newton statistics (``sampled_stats``: ``shampoo_gn``,
``soap_gn``) gets them as ``stats_grads=``, the gradient at labels sampled
from the model (:func:`matopt.sampled_label_grads`, one more backward
pass, counted in the step's time), with a key that is a function of the
run's seed and the step.

With ``checkpoint_every`` set, parameters and optimizer state are saved by
orbax-checkpoint with the history so far; a run started again in the same
directory continues from the newest checkpoint and, because batches are
functions of the step, ends exactly where an uninterrupted run would.

With a mesh, parameters, state and batches are laid out as
:mod:`matopt.experiments.parallel` describes and the step runs under
``jax.set_mesh``; checkpoints hold the global arrays and come back in the
same layout. A mesh may span several processes
(:mod:`matopt.experiments.processes`): each one then places and saves its
own shards, and only process 0 writes the metrics logs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import PartitionSpec

from matopt import gauss_newton, sharding
from matopt.experiments import logs, parallel, processes

StepCallback = Callable[[int, float], None]


def _named(tree: Any, name: str) -> Any:
  """The part of a nested dict of sown values under keys equal to ``name``."""
  if not isinstance(tree, Mapping):
    return None
  out = {}
  for key, value in tree.items():
    kept = value if key == name else _named(value, name)
    if kept is not None and (key == name or kept):
      out[key] = kept
  return out


@dataclasses.dataclass(frozen=True)
class Step:
  """A compiled-on-demand step and evaluation for one model and optimizer.

  Attributes:
    train: ``train(params, opt_state, batch, index) -> (params, opt_state,
      (loss, peaks))``, ``index`` the step's number (an int32 scalar: one
      compilation), ``peaks`` the largest value of each update argument the
      step reported (a dict keyed by argument name).
    evaluate: ``evaluate(params, batch) -> (loss, aux)`` (jitted).
    place: puts a host batch where the step expects it.
  """

  train: Any
  evaluate: Any
  place: Callable[[Any], Any]


def make_step(
  task: Any,
  tx: optax.GradientTransformation,
  graphdef: Any,
  rest: Any,
  *,
  update_args: Sequence[str] = (),
  mesh: jax.sharding.Mesh | None = None,
  state_shardings: Any = None,
  sampled_stats: Mapping[str, Any] | None = None,
  seed: int = 0,
) -> Step:
  """The training and evaluation functions of ``task``'s model under ``tx``.

  Args:
    task: a :class:`~matopt.experiments.tasks.Task`.
    tx: the optimizer.
    graphdef, rest: the model's graph and non-parameter state (``nnx.split``).
    update_args: arguments ``tx.update`` needs, sown by the model under their
      names (``task.make_model(seed, report=update_args)``).
    mesh: the device mesh, or None for the default device.
    state_shardings: with a mesh, the shardings of ``(params, opt_state)``,
      pinned on the step's outputs (the ahead-of-time compiled step accepts
      exactly those, where XLA's own choice could drift).
    sampled_stats: None, or keywords of :func:`matopt.sampled_label_grads`
      (``num_samples``, ``fraction``): ``tx.update`` then also gets
      ``stats_grads=``, the gradient at labels sampled from the model's
      logits (``task.inputs_and_labels``).
    seed: with ``sampled_stats``, the run's seed; step ``index`` samples with
      ``fold_in(key(seed), index)``, so a resumed run draws what an
      uninterrupted one would.
  """

  def loss_and_reports(p, batch):
    """``(loss, (aux, reports))``: reports maps each update argument to what the model sowed."""
    model = nnx.merge(graphdef, p, rest)
    if not update_args:
      loss, aux = task.loss(model, batch)
      return loss, (aux, {})
    (loss, aux), sown = nnx.capture(task.loss, nnx.Intermediate)(model, batch)
    sown = nnx.to_pure_dict(sown)
    return loss, (aux, {name: _named(sown, name) for name in update_args})

  def sampled(p, batch, index):
    """``(loss, grads, {"stats_grads": ...})``: one forward pass, two backward passes."""
    inputs, labels = task.inputs_and_labels(batch)
    key = jax.random.fold_in(jax.random.key(seed), index)
    out = gauss_newton.sampled_label_grads(
      lambda p, x: nnx.merge(graphdef, p, rest)(x), p, inputs, labels, key, **sampled_stats
    )
    return out.loss, out.grads, {"stats_grads": out.stats_grads}

  def train_step(p, s, batch, index):
    if sampled_stats is None:
      (loss, (_, reports)), grads = jax.value_and_grad(loss_and_reports, has_aux=True)(p, batch)
      stats = {}
    else:
      loss, grads, stats = sampled(p, batch, index)
      # No catalogue optimizer needs both; the sown reports then cost one more forward pass.
      reports = loss_and_reports(p, batch)[1][1] if update_args else {}
    updates, s = update(grads, s, p, **reports, **stats)
    peaks = {name: _peak(tree) for name, tree in reports.items()}  # before this step's update acts
    return optax.apply_updates(p, updates), s, (loss, peaks)

  def eval_step(p, batch):
    loss, (aux, _) = loss_and_reports(p, batch)
    return loss, aux

  update = tx.update if mesh is None else _explicit_update(tx, state_shardings[0], state_shardings[1])
  if mesh is None:
    return Step(jax.jit(train_step), jax.jit(eval_step), lambda batch: batch)
  out_shardings = (*state_shardings, parallel.replicated(mesh))
  return Step(
    jax.jit(train_step, out_shardings=out_shardings),
    jax.jit(eval_step),
    functools.partial(parallel.place_batch, mesh=mesh),
  )


def _explicit_update(tx: optax.GradientTransformation, params: Any, state: Any) -> Callable[..., Any]:
  """``tx.update`` run with the mesh's axes Explicit, the layouts in the arrays' types.

  The model runs under ``AxisType.Auto`` (XLA partitions its matmuls; under
  Explicit axes its products of a batch split over ``data`` with weights
  split over ``data`` are sharding type errors). Under Auto axes the layout
  of an array inside ``jit`` is unknown while tracing, so
  :func:`matopt.sharding.map_stacked` cannot write the exchange of matrix
  blocks between devices, and XLA gathers the whole stack on every device
  instead (8× the minimum bytes on a ``(4, 2)`` mesh; with the layouts
  known, exactly the minimum: ``benchmarks/comm_bytes.py``). Inside
  ``jax.sharding.explicit_axes`` the gradients, parameters and
  ``stats_grads`` have the parameters' layouts (``params``, the
  ``NamedSharding`` pinned on the step's outputs), the state its own
  (``state``), and the update arguments the model reports (QK-clip's
  per-head maxima, a few numbers) are replicated. They are passed
  positionally: ``explicit_axes`` gives types to positional arguments only.
  Shampoo and SOAP gain nothing yet: their update returns to Auto axes
  (:func:`matopt.sharding.auto_axes_update`) for products that mix layouts.
  """
  param_specs, state_specs = jax.tree.map(lambda s: s.spec, (params, state))

  def run(grads, opt_state, p, extra):
    return tx.update(grads, opt_state, p, **extra)

  def update(grads, opt_state, p, **extra):
    extra_specs = {
      name: param_specs if name == "stats_grads" else jax.tree.map(lambda _: PartitionSpec(), value)
      for name, value in extra.items()
    }
    in_sharding = (param_specs, state_specs, param_specs, extra_specs)
    return jax.sharding.explicit_axes(run, in_sharding=in_sharding)(grads, opt_state, p, extra)

  return update


def _peak(tree: Any) -> jax.Array:
  """The largest value in ``tree``; NaN when it holds none."""
  leaves = jax.tree.leaves(tree)
  return jnp.max(jnp.stack([jnp.max(x) for x in leaves])) if leaves else jnp.float32(jnp.nan)


def _evaluate(step: Step, params: Any, batches: Any) -> tuple[float, Any]:
  """Mean loss and mean aux (leaf by leaf) over the stacked validation batches."""
  count = len(jax.tree.leaves(batches)[0])
  losses, auxes = [], []
  for i in range(count):
    loss, aux = step.evaluate(params, step.place(jax.tree.map(lambda b, i=i: b[i], batches)))
    losses.append(float(loss))
    auxes.append(jax.tree.map(float, aux))
  return float(np.mean(losses)), jax.tree.map(lambda *xs: float(np.mean(xs)), *auxes)


class Checkpoints:
  """orbax CheckpointManager for ``{"params", "opt_state"}`` plus JSON metadata.

  The state is saved as the pytree it is, except that a zero-size leaf
  (which holds no data) is saved as None and comes back from the freshly
  initialised state: orbax 0.x refuses zero-size arrays ("Cannot save arrays
  with zero size", still so in 0.12). No matopt state holds one today
  (SOAP's unrotated sides are 0-d placeholders), but an optimizer's state
  may, e.g. for a zero-size parameter.
  """

  def __init__(self, directory: Path):
    import orbax.checkpoint as ocp  # imported lazily: slow, and only needed here

    self.ocp = ocp
    self.manager = ocp.CheckpointManager(
      directory.absolute(), options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True)
    )

  def latest(self) -> int | None:
    return self.manager.latest_step()

  @staticmethod
  def _saved(state: Any, fn: Callable[[Any], Any] = lambda x: x) -> Any:
    return jax.tree.map(lambda x: fn(x) if np.size(x) else None, state)

  def save(self, step: int, state: Any, meta: dict) -> None:
    ocp = self.ocp
    self.manager.save(
      step, args=ocp.args.Composite(state=ocp.args.StandardSave(self._saved(state)), meta=ocp.args.JsonSave(meta))
    )
    self.manager.wait_until_finished()

  def restore(self, step: int, like: Any) -> tuple[Any, dict]:
    """The state saved at ``step``, in the structure and layout of ``like``, and its metadata."""
    ocp = self.ocp
    out = self.manager.restore(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardRestore(self._saved(like, ocp.utils.to_shape_dtype_struct)), meta=ocp.args.JsonRestore()
      ),
    )
    saved = jax.tree.leaves(out["state"], is_leaf=lambda x: x is None)
    leaves, treedef = jax.tree.flatten(like)
    return jax.tree.unflatten(treedef, [f if s is None else s for f, s in zip(leaves, saved)]), out["meta"]

  def close(self) -> None:
    self.manager.close()


@dataclasses.dataclass
class _Run:
  """The loop's state: what a checkpoint holds and what the result reports."""

  params: Any
  opt_state: Any
  history: dict[str, list]
  step: int = 0
  seconds: float = 0.0  # training time, compilation and evaluation excluded
  wall_before: float = 0.0  # wall time of earlier sessions of this run
  diverged: bool = False


def _init(
  task: Any,
  tx: optax.GradientTransformation,
  seed: int,
  mesh: jax.sharding.Mesh | None,
  update_args: Mapping[str, str],
  sampled_stats: Mapping[str, Any] | None,
) -> tuple[Step, _Run]:
  """The model, optimizer state and step of a fresh run."""
  model = task.make_model(seed, report=tuple(update_args)) if update_args else task.make_model(seed)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  if mesh is None:
    opt_state, shardings = tx.init(params), None
  else:
    params = parallel.place_params(params, mesh)
    opt_state = sharding.init_state(tx, params)
    shardings = jax.tree.map(lambda x: x.sharding, (params, opt_state))
  step = make_step(
    task,
    tx,
    graphdef,
    rest,
    update_args=tuple(update_args),
    mesh=mesh,
    state_shardings=shardings,
    sampled_stats=sampled_stats,
    seed=seed,
  )
  history: dict[str, list] = {"train": [], "val": [], **{key: [] for key in update_args.values()}}
  return step, _Run(params, opt_state, history)


def _restore(ckpt: Checkpoints, run: _Run) -> _Run:
  """``run`` continued from the newest checkpoint, if there is one."""
  latest = ckpt.latest()
  if latest is None:
    return run
  state, meta = ckpt.restore(latest, {"params": run.params, "opt_state": run.opt_state})
  return _Run(state["params"], state["opt_state"], meta["history"], latest, meta["seconds"], meta["wall_seconds"])


def _loop(
  task: Any,
  step: Step,
  compiled: Any,
  run: _Run,
  *,
  steps: int,
  eval_every: int,
  update_args: Mapping[str, str],
  save: Callable[[_Run], None] | None,
  checkpoint_every: int,
  on_step: StepCallback | None,
  stop_after: int | None,
  seed: int,
  log: logs.MetricsLog | None = None,
) -> None:
  """Train ``run`` in place until ``steps``, divergence or ``stop_after``."""
  val = task.val_batches()
  while run.step < steps:
    batch = task.train_batch(run.step, seed)
    t0 = time.perf_counter()
    run.params, run.opt_state, (loss, peaks) = compiled(
      run.params, run.opt_state, step.place(batch), np.int32(run.step)
    )
    loss = float(loss)  # waits for the step: per-step times are real
    run.seconds += time.perf_counter() - t0
    run.step += 1
    run.history["train"].append([run.step, run.seconds, loss])
    for name, key in update_args.items():  # setdefault: a checkpoint's history may predate the key
      run.history.setdefault(key, []).append([run.step, float(peaks[name])])
    if on_step:
      on_step(run.step, loss)
    if not math.isfinite(loss):
      run.diverged = True
      if log:
        log.flush(run.history)
      return
    if (eval_every and run.step % eval_every == 0) or run.step == steps:
      run.history["val"].append([run.step, run.seconds, *_evaluate(step, run.params, val)])
    if log:
      log.flush(run.history)
    if save and (run.step % checkpoint_every == 0 or run.step == steps):
      save(run)
    if stop_after is not None and stop_after <= run.step < steps:
      return


def _result(
  task: Any, run: _Run, steps: int, update_args: Mapping[str, str], compile_seconds: float, wall_seconds: float
) -> dict[str, Any]:
  history, ok = run.history, not run.diverged
  tail = [h[2] for h in history["train"][-10:]]
  return {
    "history": history,
    "steps": run.step,
    "complete": run.step == steps or run.diverged,
    "diverged": run.diverged,
    "final_train_loss": float(np.mean(tail)) if tail and ok else math.inf,
    "final_val_loss": history["val"][-1][2] if history["val"] and ok else math.inf,
    "final_val_aux": history["val"][-1][3] if history["val"] and ok else math.nan,
    "train_seconds": run.seconds,
    "compile_seconds": compile_seconds,
    "wall_seconds": wall_seconds,
    "units_per_second": run.step * task.units_per_step / run.seconds if run.seconds > 0 else None,
    **{f"final_{key}": _tail_mean(history.get(key, [])) for key in update_args.values()},
  }


def _tail_mean(rows: list) -> float:
  peaks = [h[1] for h in rows[-10:]]
  return float(np.mean(peaks)) if peaks else math.nan


def train(
  task: Any,
  tx: optax.GradientTransformation,
  *,
  steps: int,
  seed: int,
  eval_every: int = 0,
  checkpoint_every: int = 0,
  run_dir: str | Path | None = None,
  on_step: StepCallback | None = None,
  stop_after: int | None = None,
  mesh: jax.sharding.Mesh | None = None,
  update_args: Sequence[str] = (),
  sampled_stats: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
  """Train ``task``'s model with ``tx`` for ``steps`` steps.

  Args:
    task: a :class:`~matopt.experiments.tasks.Task`.
    tx: the optimizer.
    steps: training steps.
    seed: the run's seed: model initialisation and the order of training batches
      (``task.train_batch(step, seed)``).
    eval_every: validation interval in steps (0: only at the end).
    checkpoint_every: checkpoint interval (0: none); needs ``run_dir``.
    run_dir: where checkpoints live, and ``metrics.jsonl``, the per-step
      metrics as JSON lines (:mod:`matopt.experiments.logs`).
    on_step: called after each step with ``(step, train_loss)``.
    stop_after: stop (after checkpointing) once this many steps are done, as
      an interrupted run would; the result is then marked incomplete.
    mesh: run on these devices (:mod:`matopt.experiments.parallel`); None:
      the default device.
    update_args: arguments ``tx.update`` needs besides ``(grads, state,
      params)``, each one the task's model reports (``task.update_args``),
      e.g. ``("max_logits",)`` for :func:`matopt.muon_clip`. The history then
      has, under the task's key for each (``max_logit``), ``[step, largest
      value of the step]`` and the result ``final_<key>`` (mean of the last 10).
    sampled_stats: keywords of :func:`matopt.sampled_label_grads`
      (``num_samples``, ``fraction``) for an optimizer that takes
      ``stats_grads=`` (Gauss–Newton statistics; ``Entry.sampling``), or None.
      Its key is a function of ``seed`` and the step.

  Returns:
    A record: ``history`` (per step: step, training seconds, train loss;
    per eval: step, training seconds, val loss, val aux), final losses,
    timings (training seconds exclude compilation and evaluation), and
    ``diverged`` when the loss became non-finite.
  """
  if checkpoint_every and run_dir is None:
    raise ValueError(
      f"train(checkpoint_every={checkpoint_every}) needs run_dir=, the directory its checkpoints go"
      " to; pass one, or checkpoint_every=0 for none."
    )
  reported = {name: task.update_args[name] for name in update_args}
  step, run = _init(task, tx, seed, mesh, reported, sampled_stats)
  ckpt = Checkpoints(Path(run_dir) / "checkpoints") if checkpoint_every else None
  if ckpt:
    run = _restore(ckpt, run)
  # Process 0 alone writes the logs (:mod:`matopt.experiments.processes`); every process checkpoints its shards.
  writes = run_dir is not None and processes.is_main()
  log = logs.MetricsLog(Path(run_dir) / logs.FILE, tuple(reported.values())) if writes else None
  if log:
    log.reset(run.history)  # a resumed run's file holds what its checkpoint holds
  # matopt's transforms spread their matrix work over the mesh they trace
  # under. (jax.set_mesh takes effect when called, so it is called here.)
  # The log closes its event files when training ends, however it ends.
  with contextlib.nullcontext() if mesh is None else jax.set_mesh(mesh), log or contextlib.nullcontext():
    wall_start = time.perf_counter()
    wall = lambda: run.wall_before + time.perf_counter() - wall_start
    # Compiled ahead of time so step times (and the time axis of the plots)
    # measure training, not compilation.
    compiled = step.train.lower(
      run.params, run.opt_state, step.place(task.train_batch(run.step, seed)), np.int32(run.step)
    ).compile()
    compile_seconds = time.perf_counter() - wall_start
    save = ckpt and (
      lambda r: ckpt.save(
        r.step,
        {"params": r.params, "opt_state": r.opt_state},
        {"seconds": r.seconds, "wall_seconds": wall(), "history": r.history},
      )
    )
    try:
      _loop(
        task,
        step,
        compiled,
        run,
        steps=steps,
        eval_every=eval_every,
        update_args=reported,
        save=save,
        checkpoint_every=checkpoint_every,
        on_step=on_step,
        stop_after=stop_after,
        seed=seed,
        log=log,
      )
    finally:
      if ckpt:
        ckpt.close()
    if not run.diverged and (not run.history["val"] or run.history["val"][-1][0] != run.step):
      run.history["val"].append([run.step, run.seconds, *_evaluate(step, run.params, task.val_batches())])
      if log:
        log.flush(run.history)
  return _result(task, run, steps, reported, compile_seconds, wall())
