"""Blocking of large matrices for Kronecker-factored preconditioners.

A ``(batch, m, n)`` stack is cut into ``(batch, bm, bn, sm, sn)`` blocks of at
most ``block_size`` per side (zero-padded to a multiple of it), so each block
gets its own small statistics, as in Anil et al. 2020 and DistributedShampoo.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class Blocking(NamedTuple):
  """Static block layout of one ``(batch, m, n)`` matrix stack."""

  m: int
  n: int
  sm: int  # block rows
  sn: int  # block columns

  @property
  def bm(self) -> int:
    return -(-self.m // self.sm)

  @property
  def bn(self) -> int:
    return -(-self.n // self.sn)

  def to_blocks(self, x: jax.Array) -> jax.Array:
    """``(batch, m, n)`` → ``(batch, bm, bn, sm, sn)`` (zero padded)."""
    pad = ((0, 0), (0, self.bm * self.sm - self.m), (0, self.bn * self.sn - self.n))
    x = jnp.pad(x, pad)
    x = x.reshape(x.shape[0], self.bm, self.sm, self.bn, self.sn)
    return jnp.transpose(x, (0, 1, 3, 2, 4))

  def from_blocks(self, b: jax.Array) -> jax.Array:
    """Inverse of :meth:`to_blocks` (padding dropped)."""
    x = jnp.transpose(b, (0, 1, 3, 2, 4))
    x = x.reshape(x.shape[0], self.bm * self.sm, self.bn * self.sn)
    return x[:, : self.m, : self.n]


def make_blocking(m: int, n: int, block_size: int | None) -> Blocking:
  """Blocks of ``min(side, block_size)``; ``None`` keeps whole matrices."""
  if block_size is None:
    return Blocking(m, n, m, n)
  return Blocking(m, n, min(m, block_size), min(n, block_size))
