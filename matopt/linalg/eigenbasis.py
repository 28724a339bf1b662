"""Eigenbases of symmetric PSD statistics for SOAP (Vyas et al. 2025)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from matopt.linalg import lapack


def eigenbasis(a: ArrayLike) -> jax.Array:
  """Orthonormal eigenvectors of symmetric ``a`` (last two axes), columns in
  descending eigenvalue order (``jnp.linalg.eigh`` returns ascending)."""
  a = jnp.asarray(a)
  _, q = lapack.eigh(0.5 * (a + jnp.swapaxes(a, -1, -2)))
  return q[..., ::-1]


def refresh_eigenbasis(a: ArrayLike, q: ArrayLike) -> tuple[jax.Array, jax.Array]:
  r"""One power-iteration step with QR from the previous basis.

  .. math::
    \lambda = \operatorname{diag}(Q^\top A Q), \quad
    \pi = \operatorname{argsort}(-\lambda), \quad
    Q' = \operatorname{QR}(A\, Q_{:, \pi})

  Sorting first keeps columns of ``Q'`` aligned with the previous basis's
  eigenvalue order, so state kept in the old basis (SOAP's second moment)
  can follow the permutation ``π`` (Vyas et al. 2025, Algorithm 4).

  Args:
    a: symmetric PSD matrices ``(..., n, n)``.
    q: previous orthonormal bases ``(..., n, n)``.

  Returns:
    ``(q_new, perm)``: the refreshed basis and the permutation ``π`` of shape
    ``(..., n)`` applied to the old columns.
  """
  a = jnp.asarray(a)
  q = jnp.asarray(q)
  estimates = jnp.einsum("...ij,...ik,...kj->...j", q, a, q)
  perm = jnp.argsort(-estimates, axis=-1)
  q_sorted = jnp.take_along_axis(q, perm[..., None, :], axis=-1)
  q_new, r = lapack.qr(a @ q_sorted)
  # QR's sign convention is arbitrary; fix diag(R) ≥ 0 so a basis that
  # already diagonalises A maps to itself (up to the sort).
  signs = jnp.where(jnp.diagonal(r, axis1=-2, axis2=-1) < 0, -1.0, 1.0).astype(q_new.dtype)
  return q_new * signs[..., None, :], perm
