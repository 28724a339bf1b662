"""Label functions: which optimizer each parameter leaf gets.

A label function maps a parameter tree to a tree of strings with the same
structure, for ``optax.multi_transform(transforms, labels)``. :func:`by_role`
names each leaf's role in the network from its Flax path and rank; the Scion
recipes map roles to operator norms.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import optax

from matopt import _tree

ROLES = ("embedding", "hidden", "head", "vector")

# Path components (case-insensitive, whole words split on _ / . -) that mark a
# leaf as an input embedding or an output head. Flax's Embed module is named
# ``Embed_0`` in linen and by attribute in nnx; GPT-2 style names wte/wpe.
EMBEDDING_NAMES = ("embed", "embedding", "embeddings", "wte", "wpe", "tok", "token", "tok_embeddings")
HEAD_NAMES = ("head", "lm_head", "logits", "classifier", "output", "out_proj_head", "readout")

# Scion (Pethick et al. 2025, Recommendation 3.1): first layer → hidden → last.
# Vectors (biases, norm scales) are seen as (1, n) rows, where ColNorm is the
# reference implementation's BiasRMS (RMS normalisation).
SCION_LANGUAGE = {"embedding": "colnorm", "hidden": "spectral", "head": "sign", "vector": "colnorm"}
SCION_IMAGE = {"embedding": "spectral", "hidden": "spectral", "head": "sign", "vector": "colnorm"}
RECIPES = {"language": SCION_LANGUAGE, "image": SCION_IMAGE}


def _words(name: str) -> list[str]:
  return [w for w in re.split(r"[_\-./]+|(?<=[a-z])(?=[A-Z])", name.lower()) if w]


def _matches(names: Sequence[str], vocabulary: Sequence[str]) -> bool:
  vocabulary = set(vocabulary)
  for name in names:
    low = name.lower()
    if low in vocabulary or any(w in vocabulary for w in _words(low)):
      return True
  return False


def _check_overrides(overrides: Mapping[str, str] | None) -> list[tuple[re.Pattern, str]]:
  compiled = []
  for pattern, role in (overrides or {}).items():
    if role not in ROLES:
      raise ValueError(
          f"Override {pattern!r} -> {role!r}: unknown role; valid roles are {ROLES}."
      )
    try:
      compiled.append((re.compile(pattern), role))
    except re.error as e:
      raise ValueError(f"Override pattern {pattern!r} is not a valid regex: {e}") from e
  return compiled


def role_of(path: tuple, leaf: Any, overrides: list[tuple[re.Pattern, str]] = ()) -> str:
  """The role of one leaf given its key path (see :func:`by_role`)."""
  # Vectors first: an override naming a module (``"attn"``) relabels its
  # kernels, never its biases or norm scales into a matrix-only role.
  if getattr(leaf, "ndim", len(getattr(leaf, "shape", ()))) < 2:
    return "vector"
  path_text = _tree.path_str(path)
  for pattern, role in overrides:
    if pattern.search(path_text):
      return role
  # The module that owns the leaf decides: ``('Embed_0', 'embedding')``,
  # ``('lm_head', 'kernel')``; the leaf's own name alone is not enough
  # (``'embedding'`` is also the attribute nnx.Embed stores its table in).
  names = _tree.path_names(path)
  if _matches(names, EMBEDDING_NAMES):
    return "embedding"
  if _matches(names, HEAD_NAMES):
    return "head"
  return "hidden"


def by_role(params: optax.Params, *, overrides: Mapping[str, str] | None = None) -> Any:
  """Labels each leaf ``"embedding" | "hidden" | "head" | "vector"``.

  Rules, in order: a leaf with ndim < 2 is ``"vector"``; the first regex in
  ``overrides`` that matches the leaf's path (``"a/b/kernel"``) gives its
  role (so an override naming a module relabels its matrices, not its
  biases); a path containing an embedding name (Embed, embed, wte, wpe,
  tok, token) is ``"embedding"``; one containing a head name (head, lm_head,
  logits, classifier, output, readout) is ``"head"``; anything else is
  ``"hidden"``. Works on linen param dicts and on ``nnx.State``.

  Args:
    params: a parameter tree.
    overrides: ``{regex: role}`` applied to the ``/``-joined path first.
      Use ``functools.partial(by_role, overrides=...)`` as a label function.

  Returns:
    A tree of role strings with the structure of ``params``.

  Raises:
    ValueError: for an override with an unknown role or a bad regex.
  """
  compiled = _check_overrides(overrides)
  return _tree.map_with_path(lambda path, leaf: role_of(path, leaf, compiled), params)


def scion_recipe(name: str) -> dict[str, str]:
  """A copy of a Scion role → norm recipe: ``"language"`` or ``"image"``."""
  if name not in RECIPES:
    raise ValueError(f"Unknown Scion recipe {name!r}; valid recipes are {tuple(RECIPES)}.")
  return dict(RECIPES[name])
