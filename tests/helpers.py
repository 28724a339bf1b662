"""Shared test inputs: random matrices of chosen shape and condition number."""

import numpy as np


def matrix_with_condition(m: int, n: int, kappa: float, seed: int = 0) -> np.ndarray:
  """Random m×n float64 matrix with singular values geomspace(1, 1/kappa)."""
  rng = np.random.default_rng(seed)
  k = min(m, n)
  u, _ = np.linalg.qr(rng.standard_normal((m, k)))
  v, _ = np.linalg.qr(rng.standard_normal((n, k)))
  return (u * np.geomspace(1.0, 1.0 / kappa, k)) @ v.T


def polar_factor(x: np.ndarray) -> np.ndarray:
  """Exact U Vᵀ in float64 (reference)."""
  u, _, vh = np.linalg.svd(np.asarray(x, np.float64), full_matrices=False)
  return u @ vh
