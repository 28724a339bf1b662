"""``eigh``, ``qr`` and ``svd`` that never hand CPU LAPACK a batch.

jaxlib's CPU LAPACK kernels split a batch over the intra-op thread pool
(``ParallelBatchMap``) and block the calling pool thread until the pieces
finish. When XLA runs several such kernels at once (independent shape groups
of one Shampoo step, or host devices in a collective) every pool thread can
be one that waits, and the step hangs forever at 0 % CPU (seen with jaxlib
0.10 on a 2-core machine, native stacks in ``ParallelBatchMap`` →
``BlockingCounter::Wait``). A single matrix per call runs inline, so on CPU
these wrappers issue one call per matrix: unrolled for small batches (the
calls are independent, so XLA still runs them side by side) and a
``lax.map`` for large ones. Results are the same matrices either way; other
backends get the batched call unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

_UNROLL = 16  # largest batch issued as separate calls rather than a loop


def per_matrix(fn: Callable[[jax.Array], tuple[jax.Array, ...]], x: jax.Array) -> tuple[jax.Array, ...]:
  """``fn(x)`` for ``x`` of shape ``(..., m, n)``; on CPU one matrix per call."""
  batch = x.shape[:-2]
  count = math.prod(batch)
  if count <= 1 or jax.default_backend() != "cpu":
    return tuple(fn(x))
  flat = x.reshape((count,) + x.shape[-2:])
  if count <= _UNROLL:
    outs = tuple(jnp.stack(o) for o in zip(*(fn(flat[i]) for i in range(count))))
  else:
    outs = tuple(jax.lax.map(lambda m: tuple(fn(m)), flat))
  return tuple(o.reshape(batch + o.shape[1:]) for o in outs)


def eigh(a: jax.Array) -> tuple[jax.Array, jax.Array]:
  """``jnp.linalg.eigh`` (ascending eigenvalues, eigenvectors as columns)."""
  w, q = per_matrix(jnp.linalg.eigh, a)
  return w, q


def eigvalsh(a: jax.Array) -> jax.Array:
  """``jnp.linalg.eigvalsh``."""
  return per_matrix(lambda m: (jnp.linalg.eigvalsh(m),), a)[0]


def qr(a: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Reduced ``jnp.linalg.qr``."""
  q, r = per_matrix(jnp.linalg.qr, a)
  return q, r


def svd(a: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Thin ``jnp.linalg.svd`` (``full_matrices=False``)."""
  u, s, vh = per_matrix(lambda m: jnp.linalg.svd(m, full_matrices=False), a)
  return u, s, vh


def svdvals(a: jax.Array) -> jax.Array:
  """Singular values, descending."""
  return per_matrix(lambda m: (jnp.linalg.svd(m, compute_uv=False),), a)[0]
