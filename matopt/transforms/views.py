"""Matrix views: how a leaf of any rank is seen as a batch of matrices.

A 2-D Flax kernel ``W`` has shape ``(fan_in, fan_out)`` (``y = x @ W``). A leaf
of another rank is viewed through dimension numbers naming its reduction
(fan-in) and output (fan-out) axes; every other axis is a batch axis. The
view is ``(batch, fan_in, fan_out)`` with the named axes flattened in order.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from optax.contrib import MuonDimensionNumbers

from matopt import _tree, sharding


class DimensionNumbers(NamedTuple):
  """Which axes of a leaf are its fan-in (reduction) and fan-out (output).

  Same fields as ``optax.contrib.MuonDimensionNumbers``, which is accepted
  wherever these are. Empty ``reduction_axis=()`` means fan_in = 1, which views
  a bias ``(n,)`` as the ``(1, n)`` matrix of a layer fed a constant 1.

  ``reduction_split`` / ``output_split`` cut the fan-in / fan-out into that
  many equal contiguous blocks and view each block as its own matrix (its
  own msign, shape factor, preconditioner). A fused QKV kernel ``(d, 3d)``
  with ``output_split=3`` is three ``(d, d)`` matrices; with
  ``output_split=3 * heads`` it is one ``(d, d_head)`` matrix per head of Q,
  K and V (heads-major layout, as a reshape to ``(d, 3, heads, d_head)``);
  an output projection ``(heads * d_head, d)`` per head is
  ``reduction_split=heads``.

  Examples: a stack of layers ``(L, d_in, d_out)`` is
  ``DimensionNumbers(reduction_axis=1, output_axis=2)``; a conv kernel
  ``(kh, kw, c_in, c_out)`` by default is ``((0, 1, 2), 3)``; a Flax nnx
  attention kernel ``(d, heads, d_head)`` is per head with
  ``DimensionNumbers(reduction_axis=0, output_axis=2)`` (heads become a
  batch axis).
  """

  reduction_axis: Sequence[int] | int = 0
  output_axis: Sequence[int] | int = 1
  reduction_split: int = 1
  output_split: int = 1


def is_dimension_numbers(x: Any) -> bool:
  return isinstance(x, (DimensionNumbers, MuonDimensionNumbers))


def default_dimension_numbers(ndim: int) -> DimensionNumbers | None:
  """Default view: ``(0, 1)`` for matrices, last axis out for ndim > 2, else None."""
  if ndim < 2:
    return None
  return DimensionNumbers(tuple(range(ndim - 1)), ndim - 1)


def _axes(spec: Sequence[int] | int, ndim: int) -> tuple[int, ...]:
  spec = (spec,) if isinstance(spec, int) else tuple(spec)
  return tuple(a % ndim if ndim else a for a in spec)


class MatrixView(NamedTuple):
  """A resolved view of one leaf: axes, splits and the resulting matrix sizes.

  ``fan_in`` / ``fan_out`` are one block's sizes and ``batch`` counts every
  block of every batch entry.
  """

  batch_axes: tuple[int, ...]
  reduction_axes: tuple[int, ...]
  output_axes: tuple[int, ...]
  shape: tuple[int, ...]
  reduction_split: int = 1
  output_split: int = 1

  @property
  def _full_fan_in(self) -> int:
    return math.prod(self.shape[a] for a in self.reduction_axes)

  @property
  def _full_fan_out(self) -> int:
    return math.prod(self.shape[a] for a in self.output_axes)

  @property
  def fan_in(self) -> int:
    return self._full_fan_in // self.reduction_split

  @property
  def fan_out(self) -> int:
    return self._full_fan_out // self.output_split

  @property
  def batch(self) -> int:
    return math.prod(self.shape[a] for a in self.batch_axes) * self.reduction_split * self.output_split

  def to_matrices(self, x: jax.Array) -> jax.Array:
    """``x`` as an array of shape ``(batch, fan_in, fan_out)``."""
    perm = self.batch_axes + self.reduction_axes + self.output_axes
    outer = math.prod(self.shape[a] for a in self.batch_axes)
    m = jnp.transpose(x, perm).reshape(outer, self._full_fan_in, self._full_fan_out)
    if self.reduction_split == self.output_split == 1:
      return m
    rs, os_ = self.reduction_split, self.output_split
    m = m.reshape(outer, rs, self.fan_in, os_, self.fan_out)
    return jnp.transpose(m, (0, 1, 3, 2, 4)).reshape(self.batch, self.fan_in, self.fan_out)

  def from_matrices(self, m: jax.Array) -> jax.Array:
    """Inverse of :meth:`to_matrices`."""
    perm = self.batch_axes + self.reduction_axes + self.output_axes
    outer = math.prod(self.shape[a] for a in self.batch_axes)
    if not self.reduction_split == self.output_split == 1:
      rs, os_ = self.reduction_split, self.output_split
      m = m.reshape(outer, rs, os_, self.fan_in, self.fan_out)
      m = jnp.transpose(m, (0, 1, 3, 2, 4))
    permuted_shape = tuple(self.shape[a] for a in perm)
    inverse = tuple(perm.index(a) for a in range(len(perm)))
    return jnp.transpose(m.reshape(permuted_shape), inverse)


def make_view(shape: tuple[int, ...], dn: Any, path: str) -> MatrixView:
  """Resolves dimension numbers for a leaf, with errors that name the leaf."""
  ndim = len(shape)
  red = _axes(dn.reduction_axis, ndim)
  out = _axes(dn.output_axis, ndim)
  named = red + out
  if any(not 0 <= a < ndim for a in named) or len(set(named)) != len(named):
    raise ValueError(
        f"Leaf {path!r} of shape {shape}: dimension numbers {dn} must name"
        f" distinct axes in range({ndim})."
    )
  batch = tuple(a for a in range(ndim) if a not in named)
  splits = {"reduction_split": getattr(dn, "reduction_split", 1), "output_split": getattr(dn, "output_split", 1)}
  sizes = {"reduction_split": math.prod(shape[a] for a in red), "output_split": math.prod(shape[a] for a in out)}
  for field, split in splits.items():
    if sizes[field] % split:
      raise ValueError(
          f"Leaf {path!r} of shape {shape}: {field}={split} does not divide its"
          f" {'fan-in' if field == 'reduction_split' else 'fan-out'} of {sizes[field]};"
          " splits must cut it into equal blocks (per head: the number of heads)."
      )
  return MatrixView(batch, red, out, tuple(shape), **splits)


def resolve_views(
    dimension_numbers: Any,
    tree: Any,
    *,
    transform: str,
    vectors_ok: bool = False,
) -> list[MatrixView | None]:
  """One :class:`MatrixView` per leaf of ``tree`` (None for masked leaves).

  Args:
    dimension_numbers: None (defaults), one ``DimensionNumbers``, a pytree of
      them (None entries take the default), or a callable of the params.
    tree: parameters or updates.
    transform: name used in error messages.
    vectors_ok: give None for leaves with no matrix view (a transform with
      a fallback for vectors) instead of raising.

  Returns:
    A list aligned with ``jax.tree.leaves(tree, is_leaf=is_masked)``.

  Raises:
    ValueError: for a leaf with no matrix view (ndim < 2 and no dimension
      numbers), naming its path and what to do.
  """
  specs = _tree.resolve_per_leaf(
      dimension_numbers, tree, is_spec=lambda s: s is None or is_dimension_numbers(s)
  )
  paths_leaves = jax.tree_util.tree_flatten_with_path(tree, is_leaf=_tree.is_masked)[0]
  views: list[MatrixView | None] = []
  for (path, leaf), dn in zip(paths_leaves, specs):
    if _tree.is_masked(leaf):
      views.append(None)
      continue
    shape = tuple(jnp.shape(leaf))
    dn = default_dimension_numbers(len(shape)) if dn is None else dn
    if dn is None and vectors_ok:
      views.append(None)
      continue
    if dn is None:
      raise ValueError(
          f"{transform} acts on matrices, but leaf {_tree.path_str(path)!r} has"
          f" shape {shape}. Label it for another transform (e.g. optax.adamw via"
          " optax.multi_transform with matopt.labels.by_role), or pass"
          " dimension_numbers that view it as a matrix."
      )
    if not is_dimension_numbers(dn):
      raise ValueError(
          f"{transform}: dimension_numbers gave leaf {_tree.path_str(path)!r} {dn!r};"
          " give each leaf a DimensionNumbers, an optax.contrib.MuonDimensionNumbers"
          " or None (the default view)."
      )
    views.append(make_view(shape, dn, _tree.path_str(path)))
  return views


def check_dimension_numbers_spec(dimension_numbers: Any) -> None:
  """Construction-time check of a dimension-numbers option."""
  if dimension_numbers is None or callable(dimension_numbers) and not is_dimension_numbers(
      dimension_numbers
  ):
    return
  if is_dimension_numbers(dimension_numbers):
    leaves = [dimension_numbers]
  else:
    leaves = jax.tree_util.tree_leaves(
        dimension_numbers, is_leaf=lambda s: is_dimension_numbers(s)
    )
  for dn in leaves:
    if not is_dimension_numbers(dn):
      raise ValueError(
          "dimension_numbers must be None, a DimensionNumbers /"
          " optax.contrib.MuonDimensionNumbers, a pytree of them (None for the"
          f" default) or a callable of the params; found {dn!r}."
      )
    for field in (dn.reduction_axis, dn.output_axis):
      axes = tuple(field) if isinstance(field, (tuple, list)) else (field,)
      if not all(isinstance(a, int) for a in axes):
        raise ValueError(f"Dimension numbers must hold ints, got {dn!r}.")
    for field in ("reduction_split", "output_split"):
      split = getattr(dn, field, 1)
      if isinstance(split, bool) or not isinstance(split, int) or split < 1:
        raise ValueError(f"{field} must be a positive int (equal blocks), got {split!r} in {dn!r}.")


def map_matrices(fn, tree: Any, views: list[MatrixView | None], *per_leaf: list) -> Any:
  """Applies ``fn(matrices, view, *extras)`` to every viewed leaf.

  ``per_leaf`` lists are aligned with the leaves (like ``views``); their
  entries are passed as ``extras``. Masked leaves pass through unchanged.
  """
  leaves, treedef = jax.tree_util.tree_flatten(tree, is_leaf=_tree.is_masked)
  out = []
  for leaf, view, *extras in zip(leaves, views, *per_leaf):
    if view is None or _tree.is_masked(leaf):
      out.append(leaf)
    else:
      out.append(view.from_matrices(fn(view.to_matrices(leaf), view, *extras)))
  return jax.tree_util.tree_unflatten(treedef, out)


def init_per_leaf(make: Callable[[Any, MatrixView], Any], tree: Any, views: list[MatrixView | None]) -> Any:
  """A state tree shaped like ``tree``: ``make(leaf, view)`` for each viewed
  leaf; masked leaves are kept as they are (``optax.masked``'s placeholders)."""
  leaves, treedef = jax.tree_util.tree_flatten(tree, is_leaf=_tree.is_masked)
  return jax.tree_util.tree_unflatten(
      treedef, [leaf if view is None else make(leaf, view) for leaf, view in zip(leaves, views)])


def map_with_state(fn: Callable[..., tuple[Any, Any]], tree: Any, state: Any, views: list[MatrixView | None]) -> tuple[Any, Any]:
  """Applies ``fn(leaf, leaf_state, view) -> (leaf, leaf_state)`` to every
  viewed leaf of ``tree``, with ``state`` a tree of per-leaf states (as made
  by :func:`init_per_leaf`); masked leaves and their states pass through.

  Returns:
    ``(new_tree, new_state)``.
  """
  leaves, treedef = jax.tree_util.tree_flatten(tree, is_leaf=_tree.is_masked)
  pairs = [(leaf, s) if view is None or _tree.is_masked(leaf) else fn(leaf, s, view)
           for leaf, s, view in zip(leaves, treedef.flatten_up_to(state), views)]
  return (jax.tree_util.tree_unflatten(treedef, [p[0] for p in pairs]),
          jax.tree_util.tree_unflatten(treedef, [p[1] for p in pairs]))


def map_matrices_grouped(fn, tree: Any, views: list[MatrixView | None], *per_leaf: list) -> Any:
  """:func:`map_matrices` for a matrix-by-matrix ``fn``: same-shape matrices
  with equal extras go through one batched call, spread over the devices of
  the current mesh (:func:`matopt.sharding.map_grouped`); ``fn`` gets
  ``view=None``."""
  leaves, treedef = jax.tree_util.tree_flatten(tree, is_leaf=_tree.is_masked)
  index, matrices, keys = [], [], []
  for i, (leaf, view, *extras) in enumerate(zip(leaves, views, *per_leaf)):
    if view is not None and not _tree.is_masked(leaf):
      index.append(i)
      matrices.append(view.to_matrices(leaf))
      keys.append(tuple(extras))
  results = sharding.map_grouped(lambda stack, key: fn(stack, None, *key), matrices, keys)
  for i, result in zip(index, results):
    leaves[i] = views[i].from_matrices(result)
  return jax.tree_util.tree_unflatten(treedef, leaves)


def matrix_transform(
    name: str,
    dimension_numbers: Any,
    apply: Callable[..., jax.Array],
    per_leaf: Callable[[Any], list] | None = None,
    *,
    grouped: bool = False,
) -> optax.GradientTransformation:
  """A stateless transform that maps ``apply`` over every leaf's matrix view.

  Args:
    name: the public transform's name, used in error messages.
    dimension_numbers: the transform's ``dimension_numbers`` option (checked here).
    apply: ``apply(matrices, view, *extras) -> matrices`` on ``(batch, fan_in,
      fan_out)`` arrays.
    per_leaf: optional ``tree -> list`` of one extra per leaf (e.g. a norm
      name); it runs at ``init`` too, so its errors surface there.
    grouped: ``apply`` works matrix by matrix and ignores its ``view``:
      batch same-shape leaves and spread them over the mesh
      (:func:`map_matrices_grouped`).

  Returns:
    An ``optax.GradientTransformation`` with ``optax.EmptyState``; leaves with
    no matrix view raise at ``init`` (and ``update``) naming their path.
  """
  check_dimension_numbers_spec(dimension_numbers)

  def extras(tree):
    return [] if per_leaf is None else [per_leaf(tree)]

  def init_fn(params):
    resolve_views(dimension_numbers, params, transform=name)
    extras(params)
    return optax.EmptyState()

  def update_fn(updates, state, params=None):
    del params
    views = resolve_views(dimension_numbers, updates, transform=name)
    mapper = map_matrices_grouped if grouped else map_matrices
    return mapper(apply, updates, views, *extras(updates)), state

  return optax.GradientTransformation(init_fn, update_fn)
