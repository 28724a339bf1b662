"""Kronecker-factored preconditioner state, shared by Shampoo and SOAP.

Both keep, for every matrix (or block) ``G`` of a leaf, statistics
``L = E[G Gᵀ]`` and ``R = E[Gᵀ G]`` and one matrix derived from each
(Shampoo's inverse roots ``L^{-p}, R^{-p}``, SOAP's eigenbases ``Q_L, Q_R``),
recomputed on some steps for every statistic of the model at once. This
module holds that skeleton as pure functions over one leaf's
:class:`Factors`; the optimizers supply what is derived from a statistic and
how it is applied.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from matopt import _tree
from matopt import sharding as sharding_lib

EMPTY = ()  # shape of a side with no preconditioner: 0-d, not 0-size (orbax cannot save 0-size arrays)


class Factors(NamedTuple):
  """One leaf's Kronecker factors, float32.

  Statistics ``(..., m, m)`` / ``(..., n, n)`` and what is derived from them,
  of the same shapes (identities at init); a side that is not preconditioned
  (or a leaf with no matrix view) holds a 0-d placeholder in both fields.
  """

  stats_left: jax.Array  # L
  stats_right: jax.Array  # R
  left: jax.Array  # Shampoo's L^{-p}, SOAP's Q_L
  right: jax.Array  # Shampoo's R^{-p}, SOAP's Q_R


class Side(NamedTuple):
  """One preconditioned side: its leaf's index and which side it is."""

  leaf: int
  left: bool


def placeholder() -> jax.Array:
  """The 0-d stand-in of a side (or moment) that is not kept."""
  return jnp.zeros(EMPTY, jnp.float32)


def no_factors() -> Factors:
  """The factors of a leaf with no matrix view: placeholders only."""
  return Factors(placeholder(), placeholder(), placeholder(), placeholder())


def init_factors(prefix: tuple[int, ...], m: int, n: int, left: bool, right: bool) -> Factors:
  """Zero statistics and identity factors ``prefix + (m, m)`` / ``(n, n)``
  for the sides that are preconditioned, placeholders for the others."""
  zeros = lambda s: jnp.zeros((*prefix, s, s), jnp.float32)
  eye = lambda s: jnp.broadcast_to(jnp.eye(s, dtype=jnp.float32), (*prefix, s, s))
  return Factors(
    zeros(m) if left else placeholder(),
    zeros(n) if right else placeholder(),
    eye(m) if left else placeholder(),
    eye(n) if right else placeholder(),
  )


def accumulate(factors: Factors, g: jax.Array, beta: Any, weight: Any) -> Factors:
  r"""Statistics of one more gradient, :math:`L \leftarrow \beta L + w\, G G^\top`
  and :math:`R \leftarrow \beta R + w\, G^\top G`, on the preconditioned sides.

  ``g`` is float32 ``(..., m, n)`` with the statistics' leading axes.
  """
  sl, sr = factors.stats_left, factors.stats_right
  if sl.ndim:
    sl = beta * sl + weight * (g @ jnp.swapaxes(g, -1, -2))
  if sr.ndim:
    sr = beta * sr + weight * (jnp.swapaxes(g, -1, -2) @ g)
  return factors._replace(stats_left=sl, stats_right=sr)


def two_sided(left: jax.Array, x: jax.Array, right: jax.Array) -> jax.Array:
  """``left @ x @ right``, skipping a 0-d placeholder (an identity) on either side."""
  if left.ndim:
    x = left @ x
  if right.ndim:
    x = x @ right
  return x


def leaves_of(tree: Any) -> tuple[list[Any], Any]:
  """Leaves and treedef of ``tree``, masked placeholders kept as leaves."""
  return jax.tree_util.tree_flatten(tree, is_leaf=_tree.is_masked)


def split(trees: Factors) -> list[Any]:
  """:class:`Factors` of trees (the optimizer state's fields) → one per leaf
  (a masked leaf stays its placeholder)."""
  columns = [leaves_of(t)[0] for t in trees]
  return [row[0] if _tree.is_masked(row[0]) else Factors(*row) for row in zip(*columns)]


def join(treedef: Any, per_leaf: Sequence[Any]) -> Factors:
  """Inverse of :func:`split`: one tree per field, shaped by ``treedef``."""
  rows = [(f,) * len(Factors._fields) if _tree.is_masked(f) else f for f in per_leaf]
  columns = list(zip(*rows)) or [()] * len(Factors._fields)
  return Factors(*(jax.tree_util.tree_unflatten(treedef, list(c)) for c in columns))


def sides(per_leaf: Sequence[Any]) -> list[Side]:
  """Every preconditioned side, leaf by leaf, left before right."""
  return [
    Side(i, left)
    for i, f in enumerate(per_leaf)
    if not _tree.is_masked(f)
    for left, stats in ((True, f.stats_left), (False, f.stats_right))
    if stats.ndim
  ]


def gather(per_leaf: Sequence[Any], where: Sequence[Side]) -> tuple[list[jax.Array], list[jax.Array]]:
  """The statistics and factors of the sides ``where``."""
  pick = lambda f, left: (f.stats_left, f.left) if left else (f.stats_right, f.right)
  pairs = [pick(per_leaf[s.leaf], s.left) for s in where]
  return [p[0] for p in pairs], [p[1] for p in pairs]


def scatter(per_leaf: Sequence[Any], where: Sequence[Side], factors: Sequence[jax.Array]) -> list[Any]:
  """``per_leaf`` with the factors of the sides ``where`` replaced."""
  out = list(per_leaf)
  for s, q in zip(where, factors):
    out[s.leaf] = out[s.leaf]._replace(left=q) if s.left else out[s.leaf]._replace(right=q)
  return out


def map_sides(fn: Callable[..., tuple[jax.Array, ...]], *columns: Sequence[jax.Array]) -> list[tuple[jax.Array, ...]]:
  """``fn`` over every side at once, grouped by size and spread over the mesh.

  Each column holds one operand per side (leading axes ``...`` of its leaf
  and two matrix axes); the matrices of all sides of one size are stacked and
  each device of the mesh computes whole ones (Anil et al. 2020, §5;
  :func:`matopt.sharding.map_stacked`).

  Args:
    fn: maps stacks ``(N, s, s)`` of every operand to a tuple of stacks
      ``(N, ...)``, matrix by matrix.
    *columns: the operands, side by side.

  Returns:
    Per side, ``fn``'s outputs with the side's leading axes restored.
  """
  flat = lambda x: x.reshape(-1, *x.shape[-2:])
  outs = sharding_lib.map_stacked(lambda stacks, key: fn(*stacks), [tuple(map(flat, c)) for c in zip(*columns)])
  return [tuple(o.reshape(*c.shape[:-2], *o.shape[1:]) for o in out) for out, c in zip(outs, columns[0])]


def init_leaves(params: Any, views: Sequence[Any], init_leaf: Callable[[jax.Array, Any], Any]) -> list[Any]:
  """``init_leaf(leaf, view)`` for every leaf of ``params`` (a masked leaf
  stays its placeholder), laid out by rows over the parameters' mesh
  (:func:`matopt.sharding.shard_rows`)."""
  leaves, _ = leaves_of(params)
  per_leaf = [leaf if _tree.is_masked(leaf) else init_leaf(leaf, v) for leaf, v in zip(leaves, views)]
  return sharding_lib.shard_rows(per_leaf, sharding_lib.mesh_of(params))
