"""ℓ2 norms that neither overflow nor underflow, and division that maps 0 to 0.

A plain ``sqrt(sum(x**2))`` overflows above ~1e19 and underflows below
~1e-19 in float32. Dividing by the largest entry first keeps every square in
[0, 1], so the norm is exact (to round-off) for entries from 1e-30 to 1e30.
Newton–Schulz's start (:func:`matopt.msign`), the column, row and Frobenius
LMOs (:func:`matopt.lmo`) and the update normalisation and clipping
(:func:`matopt.normalize_by_norm`, :func:`matopt.clip_by_norm`) all use it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Axis = int | tuple[int, ...] | None


def scaled_l2(x: jax.Array, axis: Axis = None) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Returns ``(x / s, ‖x‖₂ / s, s)`` with ``s = max |x|`` along ``axis`` (1 where that is 0).

  The reductions keep their axes, so all three broadcast against ``x``.
  ``axis=None`` reduces over every axis; an empty ``x`` has norm 0.
  """
  # initial=0: |x| >= 0, so it changes nothing but gives empty arrays a max.
  peak = jnp.max(jnp.abs(x), axis=axis, keepdims=True, initial=0)
  peak = jnp.where(peak > 0, peak, jnp.ones_like(peak))
  y = x / peak
  return y, jnp.sqrt(jnp.sum(y * y, axis=axis, keepdims=True)), peak


def safe_l2(x: jax.Array, axis: Axis = None, *, keepdims: bool = False) -> jax.Array:
  """‖x‖₂ along ``axis`` (every axis for None), exact for entries from 1e-30 to 1e30."""
  _, norm, peak = scaled_l2(x, axis)
  out = norm * peak
  if keepdims:
    return out
  return jnp.squeeze(out, axis=tuple(range(x.ndim)) if axis is None else axis)


def safe_divide(x: jax.Array, d: jax.Array) -> jax.Array:
  """``x / d`` with 0 wherever ``d == 0`` (a zero row or update stays zero)."""
  nonzero = d > 0
  return jnp.where(nonzero, x / jnp.where(nonzero, d, jnp.ones_like(d)), jnp.zeros_like(x))
