"""Pytree helpers shared by transforms and labels: leaf paths and per-leaf options."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
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


# Names a parameter takes inside its module (Flax kernel/bias/scale/embedding,
# PyTorch-style weight, Haiku w/b/offset): they say what kind of array a leaf
# is, while the module that owns it says what it does in the network.
PARAM_NAMES = ("kernel", "weight", "w", "embedding", "bias", "b", "scale", "offset")
# Leaf names of vectors however many axes they have: a bias or a norm's scale
# stacked by nn.scan / nnx.vmap is (L, d), nnx.MultiHeadAttention's biases are
# (heads, d_head); neither is a linear map.
VECTOR_NAMES = ("bias", "b", "scale", "offset")
# Words naming normalisation modules (LayerNorm, RMSNorm, ln_1, final_layer_norm),
# whose parameters are gains and offsets even when called "weight".
NORM_WORDS = ("norm", "layernorm", "rmsnorm", "batchnorm", "groupnorm", "ln")
# Collections a linen variable dict starts with; not part of the model's structure.
COLLECTIONS = ("params",)


def words(name: str) -> list[str]:
  """Lower-case words of a path entry: ``'lm_head'`` → ``['lm', 'head']``,
  ``'LayerNorm_0'`` → ``['layer', 'norm', '0']`` (split on ``_ - . /`` and camel case)."""
  return [w.lower() for w in re.split(r"[_\-./]+|(?<=[a-z])(?=[A-Z])", name) if w]


def module_path(path: tuple) -> tuple[str, ...]:
  """Names along a key path without wrappers and a leading collection (``params``)."""
  names = path_names(path)
  while names[:1] and names[0] in COLLECTIONS and len(names) > 1:
    names = names[1:]
  return names


def owner_index(names: tuple[str, ...]) -> int:
  """Index of the module that owns the leaf: its parent when the leaf has a
  parameter name (``dense/kernel``), else the leaf itself (a parameter
  declared by name, such as ``pos_embedding`` or ViT's ``cls_token``)."""
  if len(names) > 1 and names[-1].lower() in PARAM_NAMES:
    return len(names) - 2
  return len(names) - 1


def is_vector_leaf(path: tuple, shape: tuple[int, ...]) -> bool:
  """True for leaves that are vectors whatever their rank.

  A leaf of ndim < 2; one named like a bias or a norm's scale (``bias``,
  ``scale``; stacked ``(L, d)`` or per-head ``(heads, d_head)``); a parameter
  of a normalisation module (``input_layernorm/weight``); or a leaf of ndim
  >= 3, not a kernel, with at most one axis longer than 1 (ViT's
  ``cls_token (1, 1, d)``).
  """
  if len(shape) < 2:
    return True
  names = module_path(path)
  if not names:
    return False
  leaf = names[-1].lower()
  if leaf in VECTOR_NAMES:
    return True
  if len(names) > 1 and leaf not in ("kernel", "embedding") and any(w in NORM_WORDS for w in words(names[-2])):
    return True
  # A declared token such as ViT's cls_token (1, 1, d) is a vector; a kernel
  # stays a matrix whatever its sizes (a 1x1 conv from one channel is (1, c)).
  return len(shape) >= 3 and leaf not in ("kernel", "weight", "embedding") and sum(n > 1 for n in shape) <= 1


def is_boxed(x: Any) -> bool:
  """True for a leaf wrapped with axis metadata: an ``nnx.Variable`` (what
  ``nnx.Optimizer`` gives ``tx.init``) or a linen ``nn.Partitioned`` box."""
  return (hasattr(x, "get_metadata") and hasattr(x, "get_value")) or (hasattr(x, "names") and hasattr(x, "unbox"))


def axis_names(x: Any) -> tuple | None:
  """The axis (sharding) names a model library recorded for a boxed leaf:
  nnx ``out_sharding`` metadata (extended by ``nnx.vmap`` / ``nnx.scan``
  with ``transform_metadata={nnx.PARTITION_NAME: ...}``) or linen
  ``nn.Partitioned.names`` (extended by ``nn.scan(metadata_params=...)``)."""
  if hasattr(x, "get_metadata"):
    meta = x.get_metadata()
    names = meta.get("out_sharding") or meta.get("sharding_names")
  elif hasattr(x, "names") and hasattr(x, "unbox"):
    names = x.names
  else:
    return None
  return tuple(names) if names else None


def leaves_like(transform: str, name: str, updates: Any, other: Any) -> list[Any]:
  """The leaves of ``other``, one per leaf of ``updates`` (masked placeholders kept as leaves).

  ``other`` must have the structure and shapes of ``updates``; where
  ``updates`` holds a masked placeholder (a leaf another transform of a
  partition owns), ``other`` may hold anything. Otherwise a ValueError names
  the first leaf that differs.
  """
  flat = lambda t: {path_str(p): x for p, x in jax.tree_util.tree_flatten_with_path(t, is_leaf=is_masked)[0]}
  try:
    leaves = jax.tree_util.tree_structure(updates, is_leaf=is_masked).flatten_up_to(other)
  except (ValueError, TypeError):
    mine, theirs = flat(updates), flat(other)
    missing = [p for p in mine if p not in theirs]
    extra = [p for p in theirs if p not in mine]
    what = (
      f"it has no leaf {missing[0]!r}"
      if missing
      else f"it has a leaf {extra[0]!r} the updates do not"
      if extra
      else "its tree structure differs (containers of other types)"
    )
    raise ValueError(
      f"{transform}: {name} must have the gradients' tree structure; {what}. Pass the gradient"
      " of the same parameters (with the same containers)."
    ) from None
  for (path, u), x in zip(jax.tree_util.tree_flatten_with_path(updates, is_leaf=is_masked)[0], leaves):
    if not is_masked(u) and jnp.shape(x) != jnp.shape(u):
      raise ValueError(
        f"{transform}: {name} leaf {path_str(path)!r} has shape {jnp.shape(x)}, the gradient's is"
        f" {jnp.shape(u)}; pass the gradient of the same parameters."
      )
  return leaves
