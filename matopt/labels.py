"""Label functions: which optimizer each parameter leaf gets.

A label function maps a parameter tree to a tree of strings with the same
structure, for ``optax.multi_transform(transforms, labels)``. :func:`by_role`
names each leaf's role in the network from its Flax path and rank; the Scion
recipes map roles to operator norms.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import optax

from matopt import _tree

ROLES = ("embedding", "hidden", "head", "vector")

# Words (case-insensitive; names split on _ - . / and camel case) that mark
# the module owning a leaf as an input embedding or an output head. Flax's
# Embed module is named ``Embed_0`` in linen and by attribute in nnx; GPT-2
# style names wte/wpe; Meta's Llama tok_embeddings.
EMBEDDING_NAMES = ("embed", "embedding", "embeddings", "wte", "wpe", "tok", "token", "tok_embeddings")
EMBEDDING_WORDS = ("embed", "embedding", "embeddings")
HEAD_NAMES = ("head", "lm_head", "logits", "classifier", "out_proj_head", "readout")
# Generic words that name a head only as a top-level module (Meta's Llama
# ``output``); inside a block they are ordinary layers (BERT's
# ``attention/output/dense``, ``output/dense``).
ROOT_HEAD_NAMES = ("output",)

# Scion (Pethick et al. 2025, Recommendation 3.1): first layer → hidden → last.
# Vectors (biases, norm scales) are seen as (1, n) rows, where ColNorm is the
# reference implementation's BiasRMS (RMS normalisation).
SCION_LANGUAGE = {"embedding": "colnorm", "hidden": "spectral", "head": "sign", "vector": "colnorm"}
SCION_IMAGE = {"embedding": "spectral", "hidden": "spectral", "head": "sign", "vector": "colnorm"}
RECIPES = {"language": SCION_LANGUAGE, "image": SCION_IMAGE}


def _matches(name: str, vocabulary: Sequence[str]) -> bool:
  return name.lower() in vocabulary or any(w in vocabulary for w in _tree.words(name))


def _check_overrides(overrides: Mapping[str, str] | None) -> list[tuple[re.Pattern, str]]:
  compiled = []
  for pattern, role in (overrides or {}).items():
    if role not in ROLES:
      raise ValueError(f"Override {pattern!r} -> {role!r}: unknown role; valid roles are {ROLES}.")
    try:
      compiled.append((re.compile(pattern), role))
    except re.error as e:
      raise ValueError(f"Override pattern {pattern!r} is not a valid regex: {e}") from e
  return compiled


def _shape(leaf: Any) -> tuple[int, ...]:
  return tuple(getattr(leaf, "shape", ()))


def _role_from_names(names: tuple[str, ...]) -> str:
  if not names:  # a bare array as the whole tree
    return "hidden"
  owner = _tree.owner_index(names)
  # A parameter of Flax's Embed (``.../embedding``) is a lookup table; so is
  # one whose owner is named as an embedding (``wte``, ``tok_embeddings``), or
  # whose enclosing module is called an embedding outright (ViT's
  # ``patch_embeddings/projection``). Only the owner may use the short words
  # (``tok``, ``token``): MLP-Mixer's ``token_mixing/Dense_0`` is hidden.
  if (
    names[-1] == "embedding"
    or any(_matches(n, EMBEDDING_NAMES) for n in names[owner:])
    or (owner > 0 and _matches(names[owner - 1], EMBEDDING_WORDS))
  ):
    return "embedding"
  if any(_matches(n, HEAD_NAMES) for n in names[owner:]):
    return "head"
  if owner == 0 and _matches(names[0], ROOT_HEAD_NAMES):
    return "head"
  return "hidden"


def _enclosing_role_module(names: tuple[str, ...]) -> str | None:
  """A head module above the owner (RoBERTa's ``classifier/out_proj``): the
  leaf may be the output layer or a hidden layer of a head MLP."""
  for name in names[: max(_tree.owner_index(names), 0)]:
    if _matches(name, HEAD_NAMES):
      return name
  return None


def role_of(path: tuple, leaf: Any, overrides: list[tuple[re.Pattern, str]] = ()) -> str:
  """The role of one leaf given its key path (see :func:`by_role`)."""
  # Vectors first: an override naming a module (``"attn"``) relabels its
  # kernels, never its biases or norm scales into a matrix-only role.
  if _tree.is_vector_leaf(path, _shape(leaf)):
    return "vector"
  path_text = _tree.path_str(path)
  for pattern, role in overrides:
    if pattern.search(path_text):
      return role
  return _role_from_names(_tree.module_path(path))


def by_role(params: optax.Params, *, overrides: Mapping[str, str] | None = None) -> Any:
  """Labels each leaf ``"embedding" | "hidden" | "head" | "vector"``.

  The module that owns a leaf decides its role, never an ancestor: the owner
  of ``a/b/kernel`` is ``b``; a parameter declared by its own name
  (``pos_embedding``, ViT's ``cls_token``) owns itself. Rules, in order:

  1. ``"vector"``: ndim < 2; a bias or scale of any rank (stacked ``(L, d)``
     from ``nn.scan`` / ``nnx.vmap``, per-head ``(heads, d_head)``); any
     parameter of a norm module (``input_layernorm/weight``); a leaf of
     ndim >= 3, other than a kernel, with at most one axis longer than 1
     (``cls_token (1, 1, d)``).
  2. The first regex in ``overrides`` that matches the leaf's path
     (``"a/b/kernel"``) gives its role (so an override naming a module
     relabels its matrices, not its biases).
  3. ``"embedding"``: Flax Embed tables (``.../embedding``), and leaves whose
     owner, or the module around the owner, is named embed, embeddings, wte,
     wpe, tok, token (ViT's ``patch_embeddings/projection``: the input layer
     of an image model is its embedding).
  4. ``"head"``: the owner is named head, lm_head, logits, classifier or
     readout; or ``output`` as a top-level module (Meta's Llama). A generic
     word inside a block is a hidden layer (BERT's ``attention/output/dense``).
  5. ``"hidden"`` otherwise. A hidden matrix inside a head module
     (RoBERTa's ``classifier/dense`` and ``classifier/out_proj``) is
     ambiguous: a ``UserWarning`` names those leaves and the override that
     settles them.

  Works on linen param dicts (with or without the ``params`` collection, and
  boxed ``nn.Partitioned`` values), Hugging Face Flax models' ``params`` and
  ``nnx.State``.

  Args:
    params: a parameter tree.
    overrides: ``{regex: role}`` applied to the ``/``-joined path first.
      Use ``functools.partial(by_role, overrides=...)`` as a label function.

  Returns:
    A tree of role strings with the structure of ``params``.

  Raises:
    ValueError: for an override with an unknown role or a bad regex.

  Examples:
    >>> import functools, jax.numpy as jnp, matopt
    >>> params = {"embed": {"embedding": jnp.ones((10, 4))},
    ...           "block": {"output": {"dense": {"kernel": jnp.ones((4, 4))}}},
    ...           "classifier": {"kernel": jnp.ones((4, 3)), "bias": jnp.ones(3)}}
    >>> matopt.labels.by_role(params)["block"]["output"]["dense"]["kernel"]
    'hidden'
    >>> fn = functools.partial(matopt.labels.by_role, overrides={r"^block/": "head"})
  """
  compiled = _check_overrides(overrides)
  ambiguous: dict[str, list[str]] = {}

  def label(path, leaf):
    role = role_of(path, leaf, compiled)
    if role == "hidden" and not any(p.search(_tree.path_str(path)) for p, _ in compiled):
      module = _enclosing_role_module(_tree.module_path(path))
      if module is not None:
        ambiguous.setdefault(module, []).append(_tree.path_str(path))
    return role

  roles = _tree.map_with_path(label, params)
  for module, paths in ambiguous.items():
    warnings.warn(
      f"by_role: {paths} sit inside the head module {module!r}, but their own"
      " modules are not named as heads, so they are labelled 'hidden'. If one"
      " of them is the output layer, say so, e.g."
      f" functools.partial(matopt.labels.by_role, overrides={{r'{re.escape(paths[-1])}$': 'head'}})"
      " (and map the others to 'hidden' to silence this warning).",
      stacklevel=2,
    )
  return roles


def scion_recipe(name: str) -> dict[str, str]:
  """A copy of a Scion role → norm recipe: ``"language"`` or ``"image"``."""
  if name not in RECIPES:
    raise ValueError(f"Unknown Scion recipe {name!r}; valid recipes are {tuple(RECIPES)}.")
  return dict(RECIPES[name])
