"""Which leaves the optimizers' ``weight_decay`` reaches by default: not vectors."""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any

import jax
import optax

from matopt import _checks
from matopt import labels as labels_lib


def not_vectors(params: optax.Params) -> Any:
  """``True`` for every leaf :func:`matopt.labels.by_role` does not label ``"vector"``.

  The default decay mask: biases and norm scales, stacked ``(L, d)`` ones
  included, are not decayed; matrices (embeddings and heads too) are. This is
  the common practice of nanoGPT (decay "all weight tensors in matmuls +
  embeddings", not "biases and layernorms") and of Hugging Face's Trainer
  (no decay on biases and LayerNorm weights).
  """
  return jax.tree.map(lambda role: role != "vector", labels_lib.by_role(params))


def decay_mask(
  factory: str,
  mask: Any | Callable[[optax.Params], Any] | None,
  weight_decay: Any = None,
) -> Any | Callable[[optax.Params], Any] | None:
  """The mask given to :func:`matopt.add_decayed_weights`: ``mask``, or :func:`not_vectors` for None.

  With a concrete ``weight_decay`` of 0 nothing is decayed, so the default
  mask selects every leaf (:func:`every_leaf`) instead of labelling the params
  at every step; it stays a mask all the same, so the state is
  ``optax.masked``'s whether λ is 0 or an array (what
  ``optax.inject_hyperparams`` passes): the two states have one tree.
  """
  _checks.check_mask(factory, "weight_decay_mask", mask)
  if mask is not None:
    return mask
  if isinstance(weight_decay, numbers.Real) and weight_decay == 0:
    return every_leaf
  return not_vectors


def every_leaf(params: optax.Params) -> Any:
  """``True`` for every leaf: the mask of a decay of 0, which needs no labels."""
  return jax.tree.map(lambda _: True, params)
