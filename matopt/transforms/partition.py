"""Per-label routing of leaves to transforms, with labels checked up front."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from typing import Any

import jax
import optax

from matopt import _checks, _tree


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
  transforms: Mapping[Hashable, optax.GradientTransformation],
  param_labels: Any | Callable[[optax.Params], Any] | None = None,
  *,
  mask_compatible_extra_args: bool = False,
  labels: Any | Callable[[optax.Params], Any] | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""``optax.partition`` that names the first leaf without a transform at ``init``.

  Each leaf is updated by the transform of its label alone:
  :math:`u_i = T_{\ell_i}(g)_i`, with :math:`\ell_i` the label of leaf
  :math:`i` and :math:`T_\ell` = ``transforms[ℓ]``. State, updates and
  extra arguments are exactly ``optax.partition``'s (this is a thin wrapper
  of it): ``update`` forwards extra keyword arguments (e.g.
  :func:`matopt.qk_clip`'s ``max_logits``) to every inner transform, also
  inside ``optax.chain``.

  Args:
    transforms: label → transform.
    param_labels: a tree of labels with the params' structure (or a prefix of
      it), or a label function such as :func:`matopt.labels.by_role`.
    mask_compatible_extra_args: as in ``optax.partition``: also mask extra
      arguments whose tree structure is the params'.
    labels: the name ``param_labels`` had before matopt followed optax's
      signature; kept so that older calls work. Give one of the two.

  Returns:
    An ``optax.GradientTransformationExtraArgs``; state
    ``optax.transforms.PartitionState``.

  Raises:
    ValueError: when neither or both of ``param_labels`` and ``labels`` are
      given; at ``init``, naming the first leaf whose label has no transform.
  """
  _checks.check_bool("mask_compatible_extra_args", mask_compatible_extra_args)
  if (param_labels is None) == (labels is None):
    raise ValueError(
      "partition needs the leaves' labels exactly once: pass param_labels (optax's name) or"
      f" labels (its former name), not {'both' if labels is not None else 'neither'}."
    )
  if param_labels is None:
    param_labels = labels
  inner = optax.partition(dict(transforms), param_labels, mask_compatible_extra_args=mask_compatible_extra_args)

  def init_fn(params):
    # optax checks the label set too, but without naming a leaf.
    check_labels(param_labels(params) if callable(param_labels) else param_labels, tuple(transforms))
    return inner.init(params)

  return optax.GradientTransformationExtraArgs(init_fn, inner.update)
