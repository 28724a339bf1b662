"""What Gauss–Newton statistics cost per training step, as ratios measured in one run.

Run: python benchmarks/gn_step.py [--layers 2] [--width 64] [--heads 4] [--seq-len 64]
     [--batch 16] [--steps 10] [--repeats 5] [--fractions 1,0.25] [--step-fractions 1]

On the experiment runner's byte-level GPT (:class:`matopt.experiments.models.GPT`
as :class:`matopt.experiments.tasks.GPTTask` builds it; the defaults are the
quickstart's size), two measurements:

- **The gradient alone.** ``jax.value_and_grad`` of the mean cross-entropy
  (the task's loss) against :func:`matopt.sampled_label_grads` (one forward
  pass, a backward pass at the true labels and one at labels sampled from
  the model) at each of ``--fractions`` (the share of the batch whose
  sampled-label gradient is taken): GN grads / plain grads.
- **A full training step.** The runner's own jitted step
  (:func:`matopt.experiments.train.make_step`: loss, gradient, optimizer
  update and ``optax.apply_updates``) for adamw, shampoo and soap, and for
  shampoo and soap with Gauss–Newton statistics (``shampoo_gn``,
  ``soap_gn``: ``stats_grads=`` from ``sampled_label_grads``) at each of
  ``--step-fractions`` (default 1, the runner's ``gn_fraction``): each GN
  step / the same optimizer's plain step, and each step / AdamW's step.

Each timing is ``--steps`` consecutive calls (a multiple of Shampoo's and
SOAP's default ``precondition_every`` of 10, so each holds one root / basis
refresh, as in training), after ``--steps`` calls left out: the first
compiles (its time goes to stderr), and they hold the first roots and SOAP's
first bases, which are built by a full ``eigh``. The
variants take turns within each of ``--repeats`` rounds, so a load change on
a shared machine hits all of them alike; ratios use the best round, and the
mean is printed beside it. Prints a Markdown table with the machine and date.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

import matopt
from matopt.experiments import models, train
from matopt.experiments.tasks import GPTTask

PRECONDITION_EVERY = 10  # matopt.shampoo's and matopt.soap's default


def _fractions(text: str) -> list[float]:
  values = [float(v) for v in text.split(",") if v.strip()]
  if not values or not all(0 < v <= 1 for v in values):
    raise argparse.ArgumentTypeError(f"fractions must be a comma-separated list in (0, 1], got {text!r}")
  return values


def _label(fraction: float) -> str:
  return "" if fraction == 1 else f", fraction {fraction:g}"


def gradient_runners(graphdef, params, rest, batch, fractions: list[float]) -> dict[str, Callable]:
  """Name -> ``run(n)`` that makes ``n`` gradient calls and returns the last output."""
  inputs, labels = GPTTask.inputs_and_labels(batch)
  logits_fn = lambda p, x: nnx.merge(graphdef, p, rest)(x)
  # The task's own loss, as the runner's plain step differentiates it.
  plain = jax.jit(jax.value_and_grad(lambda p, b: GPTTask.loss(nnx.merge(graphdef, p, rest), b)[0]))
  runners = {"grads: value_and_grad (mean CE)": lambda n: [plain(params, batch) for _ in range(n)][-1]}
  for f in fractions:
    fn = jax.jit(
      lambda p, x, y, i, f=f: matopt.sampled_label_grads(
        logits_fn, p, x, y, jax.random.fold_in(jax.random.key(0), i), fraction=f
      )
    )
    runners[f"grads: sampled_label_grads{_label(f)}"] = lambda n, fn=fn: [
      fn(params, inputs, labels, jnp.int32(i)) for i in range(n)
    ][-1]
  return runners


def step_runners(graphdef, params, rest, batch, fractions: list[float]) -> dict[str, Callable]:
  """Name -> ``run(n)`` that makes ``n`` training steps (carrying parameters,
  state and step index from call to call) and returns the last outputs."""
  optimizers = {
    "adamw": optax.adamw(1e-3),
    "shampoo": matopt.shampoo(1e-3, precondition_every=PRECONDITION_EVERY),
    "soap": matopt.soap(3e-3, precondition_every=PRECONDITION_EVERY),
  }
  variants = [("adamw", "adamw", None)]
  for name in ("shampoo", "soap"):
    variants.append((name, name, None))
    variants += [(f"{name}_gn{_label(f)}", name, {"num_samples": 1, "fraction": f}) for f in fractions]
  runners = {}
  for label, name, sampled in variants:
    tx = optimizers[name]
    step = train.make_step(GPTTask, tx, graphdef, rest, sampled_stats=sampled)
    carry = {"params": params, "state": tx.init(params), "index": 0}

    def run(n, step=step, carry=carry):
      p, s, i = carry["params"], carry["state"], carry["index"]
      for _ in range(n):
        p, s, out = step.train(p, s, batch, jnp.int32(i))
        i += 1
      carry.update(params=p, state=s, index=i)
      return p, s, out

    runners[f"step: {label}"] = run
  return runners


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--layers", type=int, default=2)
  parser.add_argument("--width", type=int, default=64)
  parser.add_argument("--heads", type=int, default=4)
  parser.add_argument("--seq-len", type=int, default=64)
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument(
    "--steps",
    type=int,
    default=PRECONDITION_EVERY,
    help=f"consecutive calls per timing; a multiple of {PRECONDITION_EVERY}",
  )
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument(
    "--fractions",
    type=_fractions,
    default=[1.0, 0.25],
    help="sampled_label_grads fractions of the gradient rows, comma-separated (default 1,0.25)",
  )
  parser.add_argument(
    "--step-fractions",
    type=_fractions,
    default=[1.0],
    help="fractions of the shampoo_gn / soap_gn step rows, comma-separated (default 1)",
  )
  args = parser.parse_args()
  if args.steps < 1 or args.steps % PRECONDITION_EVERY:
    parser.error(
      f"--steps must be a positive multiple of {PRECONDITION_EVERY} (one refresh per timing), got {args.steps}"
    )
  if args.repeats < 1:
    parser.error(f"--repeats must be positive, got {args.repeats}")

  model = models.GPT(
    vocab=256,
    width=args.width,
    layers=args.layers,
    heads=args.heads,
    seq_len=args.seq_len,
    positions="rope",
    rngs=nnx.Rngs(0),
  )
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  # Random bytes: the cost does not depend on the text, and no corpus is read.
  batch = jax.random.randint(jax.random.key(1), (args.batch, args.seq_len + 1), 0, 256, dtype=jnp.int32)
  n_params = sum(p.size for p in jax.tree.leaves(params))

  runners = {
    **gradient_runners(graphdef, params, rest, batch, args.fractions),
    **step_runners(graphdef, params, rest, batch, args.step_fractions),
  }
  # Excluded from the timings: the first call (compilation) and the rest of the
  # first `--steps` calls, which hold the first roots and SOAP's first bases
  # (a full eigh, where later refreshes take a power step and a QR).
  for name, run in runners.items():
    t0 = time.perf_counter()
    jax.block_until_ready(run(1))
    print(f"compiled {name}: {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    jax.block_until_ready(run(args.steps - 1))
  times: dict[str, list[float]] = {name: [] for name in runners}
  for _ in range(args.repeats):
    for name, run in runners.items():
      t0 = time.perf_counter()
      jax.block_until_ready(run(args.steps))
      times[name].append((time.perf_counter() - t0) / args.steps)
  best = {name: min(ts) for name, ts in times.items()}
  mean = {name: sum(ts) / len(ts) for name, ts in times.items()}

  def baseline(name: str) -> str | None:
    """The same work without Gauss–Newton statistics."""
    if name.startswith("grads: sampled"):
      return "grads: value_and_grad (mean CE)"
    if "_gn" in name:
      return name.split("_gn")[0]
    return None

  device = jax.devices()[0]
  print(
    f"{datetime.date.today()} · {device.platform}:{device.device_kind} · "
    f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs · jax {jax.__version__} · "
    f"GPT {args.layers} layers, width {args.width}, {args.heads} heads, seq_len {args.seq_len}, "
    f"batch {args.batch}: {n_params / 1e6:.3f}M float32 parameters · {args.steps} consecutive calls "
    f"per timing, best of {args.repeats}\n"
  )
  print("| what | ms / call (best) | ms / call (mean) | / without GN | / AdamW step |")
  print("|---|---|---|---|---|")
  adamw = best["step: adamw"]
  for name in runners:
    base = baseline(name)
    without = f"{best[name] / best[base]:.2f}" if base else "—"
    vs_adamw = f"{best[name] / adamw:.2f}" if name.startswith("step:") else "—"
    print(f"| {name} | {best[name] * 1e3:.2f} | {mean[name] * 1e3:.2f} | {without} | {vs_adamw} |")


if __name__ == "__main__":
  main()
