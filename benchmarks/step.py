"""A full optimizer step on a transformer-shaped parameter tree.

Run: python benchmarks/step.py [--layers 4] [--width 256] [--vocab 1024] [--steps 10]

For adamw, muon, optax.contrib.muon, muon on every 2-D leaf (optax's
default work), scion, shampoo and soap: the jitted
update's mean time over ``--steps`` consecutive steps (so Shampoo's and
SOAP's periodic root / basis refreshes are amortised as in training, with
``precondition_every = --steps``), its ratio to AdamW's, and the optimizer
state's bytes per parameter. Prints a Markdown table with machine and date.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import time

import jax
import jax.numpy as jnp
import optax

import matopt


def transformer_params(layers: int, width: int, vocab: int) -> dict:
  """Flax-layout kernels of a GPT: embedding, fused QKV, projections, MLP,
  norm scales, head."""
  key = iter(jax.random.split(jax.random.key(0), 8 * layers + 4))
  normal = lambda shape: 0.02 * jax.random.normal(next(key), shape)
  params = {"embed": {"embedding": normal((vocab, width))}, "head": {"kernel": normal((width, vocab))}}
  for i in range(layers):
    params[f"block{i}"] = {
      "qkv": {"kernel": normal((width, 3 * width))},
      "proj": {"kernel": normal((width, width))},
      "fc": {"kernel": normal((width, 4 * width))},
      "out": {"kernel": normal((4 * width, width))},
      "norm1": {"scale": jnp.ones(width)},
      "norm2": {"scale": jnp.ones(width)},
    }
  return params


def optimizers(every: int) -> dict[str, optax.GradientTransformation]:
  return {
    "adamw": optax.adamw(1e-3),
    "muon": matopt.muon(0.02),
    "optax.contrib.muon": optax.contrib.muon(0.02),
    # The same work as optax.contrib.muon's default: every 2-D leaf
    # (embedding and head included) orthogonalised, vectors to Adam.
    "muon (every 2-D leaf)": matopt.muon(
      0.02, labels=lambda p: jax.tree.map(lambda x: "hidden" if x.ndim == 2 else "vector", p)
    ),
    "scion": matopt.scion(2**-12),
    "shampoo": matopt.shampoo(1e-3, precondition_every=every),
    "soap": matopt.soap(3e-3, precondition_every=every),
  }


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--layers", type=int, default=4)
  parser.add_argument("--width", type=int, default=256)
  parser.add_argument("--vocab", type=int, default=1024)
  parser.add_argument("--steps", type=int, default=10)
  args = parser.parse_args()
  params = transformer_params(args.layers, args.width, args.vocab)
  grads = jax.tree.map(lambda p: jax.random.normal(jax.random.key(1), p.shape), params)
  n_params = sum(p.size for p in jax.tree.leaves(params))
  rows = []
  for name, tx in optimizers(args.steps).items():
    state = tx.init(params)
    update = jax.jit(tx.update)
    updates, state = update(grads, state, params)  # compile, and SOAP's basis-building first step
    jax.block_until_ready(updates)
    t0 = time.perf_counter()
    for _ in range(args.steps):
      updates, state = update(grads, state, params)
    jax.block_until_ready((updates, state))
    seconds = (time.perf_counter() - t0) / args.steps
    state_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state))
    rows.append((name, seconds, state_bytes / n_params))
  adamw = rows[0][1]
  device = jax.devices()[0]
  print(
    f"{datetime.date.today()} · {device.platform}:{device.device_kind} · {platform.processor() or platform.machine()}"
    f" · jax {jax.__version__} · {args.layers} layers, width {args.width}, vocab {args.vocab}: "
    f"{n_params / 1e6:.2f}M float32 parameters, mean of {args.steps} steps\n"
  )
  print("| optimizer | ms / step | time / AdamW | state bytes / parameter |")
  print("|---|---|---|---|")
  for name, seconds, per_param in rows:
    print(f"| {name} | {seconds * 1e3:.1f} | {seconds / adamw:.2f} | {per_param:.1f} |")
  time_of = lambda n: next(r[1] for r in rows if r[0] == n)
  theirs = time_of("optax.contrib.muon")
  print(
    f"\nmuon / optax.contrib.muon time: {time_of('muon') / theirs:.2f}; the same work "
    f"(every 2-D leaf): {time_of('muon (every 2-D leaf)') / theirs:.2f}"
  )


if __name__ == "__main__":
  main()
