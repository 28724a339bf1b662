"""The factor 1 − β that turns ``optax.trace``'s sum into the references' EMA."""

from typing import Any

import jax
import jax.numpy as jnp
import optax


def scale_by_ema_weight(momentum: Any) -> optax.GradientTransformation:
  r"""Multiplies by :math:`1 - \beta`, keeping each leaf's dtype.

  ``optax.trace`` sums :math:`M_t = \beta M_{t-1} + G_t`; Jordan's Muon and
  its ports keep the EMA :math:`(1-\beta) M_t` (and Nesterov's
  :math:`(1-\beta)(G_t + \beta M_t)`). The factor makes Newton–Schulz start
  from the references' matrix, so its ε (added to ‖N‖_F) weighs the same as
  in their code. β may be an injected array: the product keeps the leaf's
  dtype all the same.
  """

  def update_fn(updates, state, params=None):
    del params
    return jax.tree.map(lambda u: u * jnp.asarray(1.0 - momentum, u.dtype), updates), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)
