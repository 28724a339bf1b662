"""Singular-value bands each registered Newton–Schulz preset reaches (msign's docstring table).

Run: python benchmarks/msign_bands.py
Prints, per preset and condition number κ, the smallest and largest singular
value of msign(X) for a random 256×1024 float32 X with singular values
geomspace(1, 1/κ). The exact polar factor has all singular values 1.
"""

import jax.numpy as jnp
import numpy as np

import matopt
from matopt.linalg import PRESETS


def matrix(m, n, kappa, seed=0):
  rng = np.random.default_rng(seed)
  k = min(m, n)
  u, _ = np.linalg.qr(rng.standard_normal((m, k)))
  v, _ = np.linalg.qr(rng.standard_normal((n, k)))
  return (u * np.geomspace(1.0, 1.0 / kappa, k)) @ v.T


def main():
  print("| preset | steps | κ | min σ | max σ |")
  print("|---|---|---|---|---|")
  for preset, record in PRESETS.items():  # every registered preset, at its default steps
    for kappa in (10.0, 1000.0):
      x = jnp.asarray(matrix(256, 1024, kappa), jnp.float32)
      s = np.linalg.svd(np.asarray(matopt.msign(x, coeffs=preset), np.float64), compute_uv=False)
      print(f"| {preset} | {record.steps} | {kappa:g} | {s.min():.4g} | {s.max():.7g} |")


if __name__ == "__main__":
  main()
