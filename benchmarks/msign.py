"""msign speed and accuracy, as ratios measured in one run.

Run: python benchmarks/msign.py [--repeats N]

Per shape (square, 1:4, 4:1, a stack): matopt.msign's time (Jordan's
coefficients, 5 steps), its FLOP rate as a fraction of this machine's plain
matmul rate (FLOPs counted from the iteration's matmuls), its time
over optax.contrib's Newton–Schulz with the same coefficients and steps, the
Gram variant's time over the plain one, ``method="auto"``'s (the default of
``scale_by_msign``, so of muon) time over optax's, and the distance of each
to the exact polar factor UVᵀ. Prints a Markdown table with the machine and date.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
from optax.contrib import _muon as optax_muon

import matopt

JORDAN = jnp.asarray([[3.4445, -4.7750, 2.0315]] * 5)
SHAPES = [(1024, 1024), (768, 3072), (3072, 768), (512, 2048), (8, 256, 256)]


def _time(fn, x, repeats: int) -> float:
  """Best of ``repeats`` timings (seconds) of a compiled call."""
  jax.block_until_ready(fn(x))
  best = float("inf")
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(x))
    best = min(best, time.perf_counter() - t0)
  return best


def ns_flops(shape, steps: int = 5) -> float:
  """Matmul FLOPs of the plain iteration: per step, for m ≤ n after the
  transpose, XXᵀ (2m²n), its square (2m³) and the product with X (2m²n).
  (XLA's cost analysis counts a while loop's body once, so it cannot be
  used for the scan here.)"""
  *batch, m, n = shape
  m, n = min(m, n), max(m, n)
  return float(np.prod(batch or [1])) * steps * (4 * m * m * n + 2 * m**3)


def matmul_rate(n: int = 1024, repeats: int = 5) -> float:
  """This machine's plain float32 matmul rate (FLOP/s) on n×n."""
  a = jax.random.normal(jax.random.key(0), (n, n))
  mm = jax.jit(lambda a: a @ a)
  return 2 * n**3 / _time(mm, a, repeats)


def _rel_err(y, x) -> float:
  u, _, vh = np.linalg.svd(np.asarray(x, np.float64), full_matrices=False)
  ref = u @ vh
  return float(np.linalg.norm(np.asarray(y, np.float64) - ref) / np.linalg.norm(ref))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()
  rate = matmul_rate(repeats=args.repeats)
  ours = jax.jit(lambda x: matopt.msign(x, coeffs=JORDAN))
  gram = jax.jit(lambda x: matopt.msign(x, coeffs=JORDAN, method="gram"))
  auto = jax.jit(lambda x: matopt.msign(x, coeffs=JORDAN, method="auto"))  # scale_by_msign's default

  # optax's function takes one matrix; vmap it over stacks.
  def theirs_fn(x):
    f = lambda m: optax_muon.orthogonalize_via_newton_schulz(m, JORDAN, ns_steps=5)
    for _ in range(x.ndim - 2):
      f = jax.vmap(f)
    return f(x)

  theirs = jax.jit(theirs_fn)
  device = jax.devices()[0]
  print(
    f"{datetime.date.today()} · {device.platform}:{device.device_kind} · {platform.processor() or platform.machine()}"
    f" · jax {jax.__version__} · matmul rate {rate / 1e9:.1f} GFLOP/s (1024² float32)\n"
  )
  print(
    "| shape | matopt ms | FLOP rate / matmul rate | matopt / optax time | gram / plain time "
    "| auto / optax time | err matopt | err optax | err gram |"
  )
  print("|---|---|---|---|---|---|---|---|---|")
  for shape in SHAPES:
    x = jax.random.normal(jax.random.key(1), shape)
    t_ours, t_theirs, t_gram, t_auto = (_time(f, x, args.repeats) for f in (ours, theirs, gram, auto))
    frac = ns_flops(shape) / t_ours / rate
    errs = [_rel_err(f(x), x) for f in (ours, theirs, gram)]
    print(
      f"| {'×'.join(map(str, shape))} | {t_ours * 1e3:.1f} | {frac:.2f} | {t_ours / t_theirs:.2f} | "
      f"{t_gram / t_ours:.2f} | {t_auto / t_theirs:.2f} | {errs[0]:.3f} | {errs[1]:.3f} | {errs[2]:.3f} |"
    )


if __name__ == "__main__":
  main()
