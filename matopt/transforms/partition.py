"""Per-label routing of leaves to transforms, with labels checked up front."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import optax

from matopt import _tree


def check_labels(labels: Any, valid: Mapping[str, Any] | tuple[str, ...]) -> None:
  """Raises a ValueError naming the first leaf whose label is not in ``valid``."""
  valid = tuple(valid)
  for path, label in jax.tree_util.tree_flatten_with_path(labels)[0]:
    if label not in valid:
      raise ValueError(
          f"Leaf {_tree.path_str(path)!r} has label {label!r}, but transforms are"
          f" given only for {valid}. Add a transform for that label, or relabel"
          " the leaf (e.g. matopt.labels.by_role(..., overrides={regex: role}))."
      )


def partition(
    transforms: Mapping[str, optax.GradientTransformation],
    labels: Any | Callable[[optax.Params], Any],
) -> optax.GradientTransformation:
  """``optax.multi_transform`` that checks every label exists at ``init``.

  Args:
    transforms: label → transform.
    labels: a tree of labels with the params' structure, or a label function
      such as :func:`matopt.labels.by_role`.

  Returns:
    The partitioned ``optax.GradientTransformation`` (state of
    ``optax.multi_transform``).

  Raises:
    ValueError: at ``init``, naming the first leaf whose label has no
      transform.
  """
  inner = optax.multi_transform(dict(transforms), labels)

  def init_fn(params):
    check_labels(labels(params) if callable(labels) else labels, tuple(transforms))
    return inner.init(params)

  return optax.GradientTransformation(init_fn, inner.update)
