"""Pytree helpers shared by transforms and labels: leaf paths and per-leaf options."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import optax


def is_masked(x: Any) -> bool:
  """True for the placeholders optax's masking puts where a leaf is not ours."""
  return x is None or isinstance(x, optax.MaskedNode)


def key_name(entry: Any) -> str:
  """The name one path entry contributes (dict key, attribute or index)."""
  for attr in ("key", "name", "idx"):
    if hasattr(entry, attr):
      return str(getattr(entry, attr))
  return str(entry)


def path_names(path: tuple) -> tuple[str, ...]:
  """Names along a key path, without the wrappers flax Variables add."""
  names = tuple(key_name(e) for e in path)
  # nnx Variables flatten with a trailing "value" / "raw_value" entry.
  while names and names[-1] in ("value", "raw_value"):
    names = names[:-1]
  return names


def path_str(path: tuple) -> str:
  """A readable leaf path such as ``'params/Dense_0/kernel'``."""
  return "/".join(path_names(path)) or "<root>"


def resolve_per_leaf(
    spec: Any,
    params: Any,
    *,
    is_spec: Callable[[Any], bool],
) -> Any:
  """Broadcasts a per-leaf option against ``params``.

  Args:
    spec: one value for every leaf (``is_spec(spec)``), a pytree of such
      values with the structure of ``params`` (masked leaves may be anything),
      or a callable ``params -> pytree``.
    params: the parameter (or update) tree.
    is_spec: tells a single value from a container of values.

  Returns:
    A list with one resolved value per leaf of ``params``, in leaf order.
  """
  if callable(spec) and not is_spec(spec):
    spec = spec(params)
  leaves = jax.tree_util.tree_leaves(params, is_leaf=is_masked)
  if is_spec(spec):
    return [spec] * len(leaves)
  spec_leaves = jax.tree_util.tree_structure(params, is_leaf=is_masked).flatten_up_to(spec)
  return spec_leaves


def map_with_path(fn: Callable, tree: Any, *rest: Any) -> Any:
  """``tree_map_with_path`` that leaves masked placeholders untouched."""

  def wrapped(path, x, *xs):
    if is_masked(x):
      return x
    return fn(path, x, *xs)

  return jax.tree_util.tree_map_with_path(wrapped, tree, *rest, is_leaf=is_masked)
