"""Decoupled weight decay, optionally cautious (Chen et al. 2025)."""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any

import jax
import optax

from matopt import _checks


def add_decayed_weights(
  weight_decay: float = 0.0,
  *,
  cautious: bool = False,
  mask: Any | Callable[[optax.Params], Any] | None = None,
) -> optax.GradientTransformation:
  r"""Adds λ·W to the update; with ``cautious``, only where they agree in sign.

  .. math::
    u \leftarrow u + \lambda\, W \quad\text{or, cautious,}\quad
    u \leftarrow u + \lambda\, \mathbb{1}[u \odot W \ge 0] \odot W

  Place it before the learning rate, as in ``optax.adamw``: the step is then
  :math:`W \leftarrow W - \eta (u + \lambda\, m \odot W)`. Cautious decay
  shrinks a coordinate only where the optimizer's own step already moves it
  towards zero, so decay never fights the update (Chen et al. 2025, eq. 4);
  the indicator is taken against the incoming update ``u`` (the descent
  direction that will be subtracted). With ``cautious=False`` this is
  ``optax.add_decayed_weights``.

  λ may be an array or a tracer (``optax.inject_hyperparams`` passes one).
  Unlike the optimizers, this primitive decays every leaf unless ``mask``
  says otherwise, as ``optax.add_decayed_weights`` does.

  Args:
    weight_decay: λ ≥ 0.
    cautious: mask the decay by ``u ⊙ W ≥ 0``.
    mask: as in ``optax.add_decayed_weights``: a pytree of bools (or a
      callable of the params giving one) selecting the leaves to decay.

  Returns:
    A stateless ``optax.GradientTransformation``; ``params`` are required in
    ``update`` when λ > 0.

  References:
    Loshchilov and Hutter, 2019. Decoupled Weight Decay Regularization. ICLR.

    Chen et al., 2025. Cautious Weight Decay. arXiv:2510.12402
  """
  _checks.check_range("weight_decay", weight_decay, 0.0, float("inf"))
  if not isinstance(cautious, bool):
    raise ValueError(f"cautious must be True or False, got {cautious!r}.")
  if not cautious:
    return optax.add_decayed_weights(weight_decay, mask)

  def update_fn(updates, state, params=None):
    # A concrete λ = 0 needs no params; a traced λ cannot be tested here.
    if isinstance(weight_decay, numbers.Real) and weight_decay == 0.0:
      return updates, state
    if params is None:
      raise ValueError("add_decayed_weights(cautious=True) needs params: call update(updates, state, params).")

    def decay(u, w):
      agree = (u * w >= 0).astype(u.dtype)
      return u + (weight_decay * agree * w).astype(u.dtype)

    return jax.tree.map(decay, updates, params), state

  tx = optax.GradientTransformation(optax.init_empty_state, update_fn)
  return optax.masked(tx, mask) if mask is not None else tx
