"""Matrix views: how a leaf of any rank is seen as a batch of matrices.

A 2-D Flax kernel ``W`` has shape ``(fan_in, fan_out)`` (``y = x @ W``). A leaf
of another rank is viewed through dimension numbers naming its reduction
(fan-in) and output (fan-out) axes; every other axis is a batch axis. The
view is ``(batch, fan_in, fan_out)`` with the named axes flattened in order.

With no dimension numbers, :func:`infer_dimension_numbers` picks the view from
the leaf's path and shape alone (``nnx.Optimizer`` gives ``tx.init`` Variables
but ``tx.update`` bare arrays, so metadata could not decide it the same way
at both calls): vectors of any rank have none, Flax attention kernels are
their Dense matrices, conv kernels keep fan_out last, and a 3-D leaf that may
be a stack of layers is refused with the dimension numbers to pass.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from optax.contrib import MuonDimensionNumbers

from matopt import _checks, _tree, sharding


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
  batch axis; the default is its ``(d, heads·d_head)`` Dense matrix); a
  Hugging Face ``Conv1D`` kernel ``(fan_out, fan_in)`` (GPT-2's ``c_attn``,
  ``c_proj``, ``c_fc``) is ``DimensionNumbers(reduction_axis=1, output_axis=0)``.
  Axes may be negative, counted from the end as in Python indexing; axes
  outside ``[-ndim, ndim)`` raise naming the leaf.
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


def _axes(spec: Sequence[int] | int, shape: tuple[int, ...], dn: Any, path: str) -> tuple[int, ...]:
  # Negative axes count from the end as in Python indexing; anything outside
  # [-ndim, ndim) is a mistake (wrapping it modulo ndim would silently view
  # another matrix, e.g. (1, 2) on a 2-D leaf as its transpose).
  ndim = len(shape)
  spec = (spec,) if isinstance(spec, int) else tuple(spec)
  bad = [a for a in spec if not -ndim <= a < ndim]
  if bad:
    raise ValueError(
      f"Leaf {path!r} of shape {shape}: dimension numbers {dn} name axes {bad},"
      f" out of range for ndim {ndim} (valid axes: -{ndim}..{ndim - 1}). Give this"
      " leaf its own DimensionNumbers (a pytree, a callable, or"
      " matopt.dimension_numbers_by_path)."
    )
  return tuple(a % ndim for a in spec)


# Modules of Flax attention (nnx.MultiHeadAttention, linen
# MultiHeadDotProductAttention) keep per-head kernels: query/key/value
# (d, heads, d_head) and out (heads, d_head, d).
_ATTENTION_IN = ("query", "key", "value")
_ATTENTION_OUT = ("out",)


def _dn_text(dn: DimensionNumbers) -> str:
  return f"DimensionNumbers(reduction_axis={dn.reduction_axis}, output_axis={dn.output_axis})"


def infer_dimension_numbers(path: tuple, shape: tuple[int, ...]) -> DimensionNumbers | None:
  """The default view of a leaf from its key path and shape.

  * vectors (ndim < 2, biases and norm scales of any rank, see
    :func:`matopt._tree.is_vector_leaf`): None, no matrix view;
  * matrices ``(fan_in, fan_out)``: ``(0, 1)``;
  * attention kernels of Flax's multi-head attention modules, owned by
    ``query`` / ``key`` / ``value`` ``(d, heads, d_head)`` or ``out``
    ``(heads, d_head, d)``: the matrix of the equivalent Dense layer,
    ``(d, heads·d_head)`` and ``(heads·d_head, d)`` (per head instead:
    ``DimensionNumbers(0, 2)`` and ``DimensionNumbers(1, 2)``);
  * other ndim >= 4 leaves: conv kernels ``(kh, kw, c_in, c_out)``, fan_out
    the last axis, fan_in the others;
  * 3-D leaves ``(1, m, n)``: the one ``(m, n)`` matrix, ``(1, 2)`` (a stack
    of one layer and a width-1 conv kernel are the same matrix; ViT's
    ``position_embeddings (1, N, d)``, a table of N positions).

  Raises:
    ValueError: for another 3-D leaf that is not an attention kernel, which may be
      a stack of layers ``(L, d_in, d_out)`` (``nn.scan``, ``nnx.vmap``) or a
      1-D conv kernel ``(k, c_in, c_out)``, and for stacked attention kernels:
      the arrays carry no record of which (``nnx.Optimizer`` passes
      ``tx.update`` bare arrays), so the message names the leaf and the
      ``DimensionNumbers`` for each reading.
  """
  shape = tuple(shape)
  ndim = len(shape)
  if _tree.is_vector_leaf(path, shape):
    return None
  if ndim == 2:
    return DimensionNumbers(0, 1)
  names = _tree.module_path(path)
  owner = names[_tree.owner_index(names)].lower() if names else ""
  where = f"Leaf {_tree.path_str(path)!r} of shape {shape}"
  advice = (
    " Pass it through dimension_numbers (a pytree, a callable of the params, or"
    " matopt.dimension_numbers_by_path({regex: DimensionNumbers}));"
    " other leaves keep their defaults."
  )
  if owner in _ATTENTION_IN + _ATTENTION_OUT:
    inputs = owner in _ATTENTION_IN
    if ndim == 3:
      return DimensionNumbers(0, (1, 2)) if inputs else DimensionNumbers((0, 1), 2)
    stacked = DimensionNumbers(1, (2, 3)) if inputs else DimensionNumbers((1, 2), 3)
    raise ValueError(
      f"{where} is an attention kernel with {ndim - 3} leading axis(es) that may stack"
      f" layers (nn.scan / nnx.vmap / nnx.scan): for layers stacked on axis 0 use"
      f" {_dn_text(stacked)}." + advice
    )
  if ndim == 3 and shape[0] == 1:
    # Both readings below view the same (m, n) matrix: nothing to ask.
    return DimensionNumbers(1, 2)
  if ndim == 3:
    raise ValueError(
      f"{where} is ambiguous: for a stack of (d_in, d_out) layers on axis 0"
      f" (nn.scan / nnx.vmap / nnx.scan) use {_dn_text(DimensionNumbers(1, 2))}; for a"
      f" 1-D convolution kernel (k, c_in, c_out) use"
      f" {_dn_text(DimensionNumbers((0, 1), 2))}." + advice
    )
  return DimensionNumbers(tuple(range(ndim - 1)), ndim - 1)


def dimension_numbers_by_path(rules: Mapping[str, Any]) -> Callable[[Any], Any]:
  """A ``dimension_numbers`` callable choosing views by leaf path.

  Args:
    rules: ``{regex: DimensionNumbers}``; the first regex that matches a
      leaf's ``/``-joined path (``"blocks/linear/kernel"``) gives its view,
      other leaves keep the default (None).

  Returns:
    ``params -> pytree of DimensionNumbers | None``, for any transform or
    optimizer's ``dimension_numbers``. Paths are the same for ``nnx.State``
    with Variables (``tx.init`` under ``nnx.Optimizer``) and the bare arrays
    ``tx.update`` receives.

  Raises:
    ValueError: for a bad regex or a value that is not dimension numbers.

  Examples:
    >>> import matopt
    >>> from matopt.transforms.views import dimension_numbers_by_path
    >>> dn = dimension_numbers_by_path({r"^blocks/.*/kernel$": matopt.DimensionNumbers(1, 2)})
    >>> tx = matopt.muon(0.02, dimension_numbers=dn)
  """
  compiled = []
  for pattern, dn in rules.items():
    try:
      regex = re.compile(pattern)
    except re.error as e:
      raise ValueError(f"dimension_numbers_by_path: {pattern!r} is not a valid regex: {e}") from e
    if not is_dimension_numbers(dn):
      raise ValueError(
        f"dimension_numbers_by_path: {pattern!r} maps to {dn!r}; give a DimensionNumbers"
        " or optax.contrib.MuonDimensionNumbers."
      )
    check_dimension_numbers_spec(dn)
    compiled.append((regex, dn))

  def spec(params: Any) -> Any:
    def pick(path, _):
      text = _tree.path_str(path)
      return next((dn for regex, dn in compiled if regex.search(text)), None)

    return _tree.map_with_path(pick, params)

  return spec


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
  shape = tuple(shape)
  red = _axes(dn.reduction_axis, shape, dn, path)
  out = _axes(dn.output_axis, shape, dn, path)
  named = red + out
  if len(set(named)) != len(named):
    raise ValueError(
      f"Leaf {path!r} of shape {shape}: dimension numbers {dn} must name distinct axes in range({ndim})."
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
  specs = _tree.resolve_per_leaf(dimension_numbers, tree, is_spec=lambda s: s is None or is_dimension_numbers(s))
  paths_leaves = jax.tree_util.tree_flatten_with_path(tree, is_leaf=_tree.is_masked)[0]
  # Axis names recorded by the model library, for error messages: seen at
  # init under nnx.Optimizer (Variables), never at update (bare arrays).
  boxes = jax.tree_util.tree_leaves(tree, is_leaf=lambda x: _tree.is_masked(x) or _tree.is_boxed(x))
  names = [_tree.axis_names(b) for b in boxes] if len(boxes) == len(paths_leaves) else [None] * len(paths_leaves)
  views: list[MatrixView | None] = []
  for (path, leaf), dn, axis_names in zip(paths_leaves, specs, names):
    if _tree.is_masked(leaf):
      views.append(None)
      continue
    shape = tuple(jnp.shape(leaf))
    try:
      dn = infer_dimension_numbers(path, shape) if dn is None else dn
    except ValueError as e:
      recorded = f" The model library names its axes {axis_names}." if axis_names else ""
      raise ValueError(f"{transform}: {e}{recorded}") from None
    if dn is None and vectors_ok:
      views.append(None)
      continue
    if dn is None:
      kind = "a vector (bias, norm scale, stacked or per-head vector)" if len(shape) >= 2 else "no matrix"
      raise ValueError(
        f"{transform} acts on matrices, but leaf {_tree.path_str(path)!r} has"
        f" shape {shape}, {kind}. Label it for another transform (e.g. optax.adamw via"
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
  if dimension_numbers is None or (callable(dimension_numbers) and not is_dimension_numbers(dimension_numbers)):
    return
  if is_dimension_numbers(dimension_numbers):
    leaves = [dimension_numbers]
  else:
    leaves = jax.tree_util.tree_leaves(dimension_numbers, is_leaf=lambda s: is_dimension_numbers(s))
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
      if not _checks.is_positive_int(split):
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
    treedef, [leaf if view is None else make(leaf, view) for leaf, view in zip(leaves, views)]
  )


def map_with_state(
  fn: Callable[..., tuple[Any, Any]], tree: Any, state: Any, views: list[MatrixView | None]
) -> tuple[Any, Any]:
  """Applies ``fn(leaf, leaf_state, view) -> (leaf, leaf_state)`` to every
  viewed leaf of ``tree``, with ``state`` a tree of per-leaf states (as made
  by :func:`init_per_leaf`); masked leaves and their states pass through.

  Returns:
    ``(new_tree, new_state)``.
  """
  leaves, treedef = jax.tree_util.tree_flatten(tree, is_leaf=_tree.is_masked)
  pairs = [
    (leaf, s) if view is None or _tree.is_masked(leaf) else fn(leaf, s, view)
    for leaf, s, view in zip(leaves, treedef.flatten_up_to(state), views)
  ]
  return (
    jax.tree_util.tree_unflatten(treedef, [p[0] for p in pairs]),
    jax.tree_util.tree_unflatten(treedef, [p[1] for p in pairs]),
  )


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
