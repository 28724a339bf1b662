"""One training run: a task, an optimizer, a learning rate; checkpointed.

The step is one ``jax.jit`` of loss, gradient and optimizer update over the
model's ``nnx.Param`` state (split once, so no graph traversal per step).
With ``checkpoint_every`` set, parameters and optimizer state are saved by
orbax-checkpoint with the history so far; a run started again in the same
directory continues from the newest checkpoint and, because batches are
functions of the step, ends exactly where an uninterrupted run would.

With a mesh, parameters, state and batches are laid out as
:mod:`matopt.experiments.parallel` describes and the step runs under
``jax.set_mesh``; checkpoints hold the global arrays and come back in the
same layout.
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from matopt import sharding
from matopt.experiments import parallel

StepCallback = Callable[[int, float], None]


def _evaluate(eval_fn, params, batches, place) -> tuple[float, float]:
  count = len(jax.tree.leaves(batches)[0])
  losses, auxes = [], []
  for i in range(count):
    loss, aux = eval_fn(params, place(jax.tree.map(lambda b: b[i], batches)))
    losses.append(float(loss))
    auxes.append(float(aux))
  return float(np.mean(losses)), float(np.mean(auxes))


class _Checkpoints:
  """orbax CheckpointManager for ``{"params", "opt_state"}`` plus JSON history.

  The state is stored as a flat ``{index: array}`` of its non-empty leaves:
  orbax refuses zero-size arrays (the placeholders of unrotated SOAP sides),
  and the tree's structure comes back from the freshly initialised state.
  """

  def __init__(self, directory: Path):
    import orbax.checkpoint as ocp  # imported lazily: slow, and only needed here

    self.ocp = ocp
    self.manager = ocp.CheckpointManager(
        directory.absolute(), options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True))

  def latest(self) -> int | None:
    return self.manager.latest_step()

  @staticmethod
  def _flat(state: Any) -> dict[str, Any]:
    return {str(i): leaf for i, leaf in enumerate(jax.tree.leaves(state)) if np.size(leaf)}

  def save(self, step: int, state: Any, meta: dict) -> None:
    ocp = self.ocp
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(self._flat(state)), meta=ocp.args.JsonSave(meta)))
    self.manager.wait_until_finished()

  def restore(self, step: int, like: Any) -> tuple[Any, dict]:
    ocp = self.ocp
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, self._flat(like))
    out = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
    leaves, treedef = jax.tree.flatten(like)
    saved = out["state"]
    leaves = [saved.get(str(i), leaf) for i, leaf in enumerate(leaves)]
    return jax.tree.unflatten(treedef, leaves), out["meta"]

  def close(self) -> None:
    self.manager.close()


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
    max_logits: bool = False,
) -> dict[str, Any]:
  """Train ``task``'s model with ``tx`` for ``steps`` steps.

  Args:
    task: a task from :mod:`matopt.experiments.tasks`.
    tx: the optimizer.
    steps: training steps.
    seed: model initialisation seed (batches follow the task's config seed).
    eval_every: validation interval in steps (0: only at the end).
    checkpoint_every: checkpoint interval (0: none); needs ``run_dir``.
    run_dir: where checkpoints live.
    on_step: called after each step with ``(step, train_loss)``.
    stop_after: stop (after checkpointing) once this many steps are done, as
      an interrupted run would; the result is then marked incomplete.
    mesh: run on these devices (:mod:`matopt.experiments.parallel`); None:
      the default device.
    max_logits: build the model with ``report_logits=True`` and pass the
      per-head largest attention logits it sows to ``tx.update(...,
      max_logits=)`` (for :func:`matopt.qk_clip` / :func:`matopt.muon_clip`);
      the history then has ``max_logit`` (step, largest logit of the step)
      and the result ``final_max_logit`` (mean of the last 10 steps').

  Returns:
    A record: ``history`` (per step: step, training seconds, train loss;
    per eval: step, training seconds, val loss, val aux), final losses,
    timings (training seconds exclude compilation and evaluation), and
    ``diverged`` when the loss became non-finite.
  """
  if checkpoint_every and run_dir is None:
    raise ValueError(
        f"train(checkpoint_every={checkpoint_every}) needs run_dir=, the directory its checkpoints go"
        " to; pass one, or checkpoint_every=0 for none.")
  model = task.make_model(seed, report_logits=True) if max_logits else task.make_model(seed)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  if mesh is None:
    opt_state = tx.init(params)
    place, jit = (lambda batch: batch), jax.jit
  else:
    params = parallel.place_params(params, mesh)
    opt_state = sharding.init_state(tx, params)
    place = functools.partial(parallel.place_batch, mesh=mesh)
    # Outputs pinned to the inputs' layout: the ahead-of-time compiled step
    # accepts exactly those shardings, where XLA's own choice could drift.
    shardings = jax.tree.map(lambda x: x.sharding, (params, opt_state))
    jit = functools.partial(jax.jit, out_shardings=(*shardings, parallel.replicated(mesh)))

  def loss_and_logits(p, batch):
    """``(loss, (aux, max_logits))``; ``max_logits`` is what the attention sowed (None when off)."""
    model = nnx.merge(graphdef, p, rest)
    if not max_logits:
      loss, aux = task.loss(model, batch)
      return loss, (aux, None)
    (loss, aux), sown = nnx.capture(task.loss, nnx.Intermediate)(model, batch)
    return loss, (aux, nnx.to_pure_dict(sown))

  def loss_fn(p, batch):
    loss, (aux, _) = loss_and_logits(p, batch)
    return loss, aux

  @jit
  def train_step(p, s, batch):
    (loss, (_, logits)), grads = jax.value_and_grad(loss_and_logits, has_aux=True)(p, batch)
    extra = {} if logits is None else {"max_logits": logits}
    updates, s = tx.update(grads, s, p, **extra)
    # The largest attention logit of the step (before clipping), NaN when not reported.
    peak = jnp.max(jnp.stack([jnp.max(x) for x in jax.tree.leaves(logits)])) if logits else jnp.float32(jnp.nan)
    return optax.apply_updates(p, updates), s, (loss, peak)

  eval_fn = jax.jit(loss_fn)
  history: dict[str, list] = {"train": [], "val": [], **({"max_logit": []} if max_logits else {})}
  start, seconds, wall_before = 0, 0.0, 0.0
  ckpt = None
  if checkpoint_every:
    ckpt = _Checkpoints(Path(run_dir) / "checkpoints")
    latest = ckpt.latest()
    if latest is not None:
      state, meta = ckpt.restore(latest, {"params": params, "opt_state": opt_state})
      params, opt_state = state["params"], state["opt_state"]
      start, seconds, wall_before, history = latest, meta["seconds"], meta["wall_seconds"], meta["history"]

  # matopt's transforms spread their matrix work over the mesh they trace
  # under. (jax.set_mesh takes effect when called, so it is called here.)
  with contextlib.nullcontext() if mesh is None else jax.set_mesh(mesh):
    val = task.val_batches()
    wall_start = time.perf_counter()
    # Compile ahead of time so step times (and the time axis of the plots)
    # measure training, not compilation.
    compiled = train_step.lower(params, opt_state, place(task.train_batch(start))).compile()
    compile_seconds = time.perf_counter() - wall_start
    diverged = False
    step = start
    try:
      while step < steps:
        batch = task.train_batch(step)
        t0 = time.perf_counter()
        params, opt_state, (loss, peak) = compiled(params, opt_state, place(batch))
        loss = float(loss)  # waits for the step: per-step times are real
        seconds += time.perf_counter() - t0
        step += 1
        history["train"].append([step, seconds, loss])
        if max_logits:  # setdefault: a checkpoint's history may predate the key
          history.setdefault("max_logit", []).append([step, float(peak)])
        if on_step:
          on_step(step, loss)
        if not math.isfinite(loss):
          diverged = True
          break
        if (eval_every and step % eval_every == 0) or step == steps:
          history["val"].append([step, seconds, *_evaluate(eval_fn, params, val, place)])
        if ckpt and (step % checkpoint_every == 0 or step == steps):
          ckpt.save(step, {"params": params, "opt_state": opt_state},
                    {"seconds": seconds, "wall_seconds": wall_before + time.perf_counter() - wall_start,
                     "history": history})
        if stop_after is not None and step >= stop_after and step < steps:
          break
    finally:
      if ckpt:
        ckpt.close()

    if diverged or not history["val"] or history["val"][-1][0] != step:
      val_loss, val_aux = (math.inf, math.nan) if diverged else _evaluate(eval_fn, params, val, place)
      if not diverged:
        history["val"].append([step, seconds, val_loss, val_aux])
  tail = [h[2] for h in history["train"][-10:]]
  peaks = [h[1] for h in history.get("max_logit", [])[-10:]]
  return {
      "history": history,
      "steps": step,
      "complete": step == steps or diverged,
      "diverged": diverged,
      "final_train_loss": float(np.mean(tail)) if tail and not diverged else math.inf,
      "final_val_loss": history["val"][-1][2] if history["val"] and not diverged else math.inf,
      "final_val_aux": history["val"][-1][3] if history["val"] and not diverged else math.nan,
      "train_seconds": seconds,
      "compile_seconds": compile_seconds,
      "wall_seconds": wall_before + time.perf_counter() - wall_start,
      "units_per_second": step * task.units_per_step / seconds if seconds > 0 else None,
      **({"final_max_logit": float(np.mean(peaks)) if peaks else math.nan} if max_logits else {}),
  }
