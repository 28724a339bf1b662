"""Shampoo with Adam grafting and decoupled weight decay."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import optax

from matopt import _checks
from matopt.optimizers import _weight_decay
from matopt.transforms.decay import add_decayed_weights
from matopt.transforms.shampoo import scale_by_shampoo


def shampoo(
  learning_rate: optax.ScalarOrSchedule,
  *,
  b1: float = 0.95,
  beta: float = 0.95,
  exponent: float = 0.25,
  eps: float = 1e-12,
  precondition_every: int = 10,
  start_preconditioning_step: int | None = None,
  graft: str = "adam",
  graft_per_block: bool = True,
  block_size: int | None = None,
  weight_decay: float = 0.0,
  cautious_weight_decay: bool = False,
  weight_decay_mask: Any | Callable[[optax.Params], Any] | None = None,
  dimension_numbers: Any = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Shampoo (:func:`matopt.scale_by_shampoo`) with decoupled weight decay.

  .. math::
    W_{t+1} = W_t - \eta\,\big(u_t + \lambda W_t\big)

  where :math:`u_t` is the grafted Shampoo direction of the momentum
  (statistics ``beta``, momentum ``b1``). Vectors and scalars take the
  graft's step. Defaults follow the modded-nanogpt Shampoo comparison
  (betas (0.95, 0.95), ε 1e-12, roots every 10 steps, Adam grafting; the
  learning rate there was 0.0018), except that the first root is taken at
  step 10, not 1, as in Meta's DistributedShampoo (see
  :func:`matopt.scale_by_shampoo`). Works under
  ``optax.inject_hyperparams`` as is; ``block_size`` fixes the state's
  shapes and must be listed in ``static_args`` to be injected. To give some
  roles another optimizer, partition with :func:`matopt.partition` and
  :mod:`matopt.labels`.

  ``update(grads, state, params, stats_grads=...)`` takes the statistics
  from another gradient, such as the one at labels sampled from the model
  (:func:`matopt.sampled_label_grads`; see :func:`matopt.scale_by_shampoo`).

  Args:
    learning_rate: η (float or schedule).
    b1: momentum of the gradient, an EMA before preconditioning (Google's
      distributed_shampoo's heavy ball after grafting is
      ``optax.trace`` chained after :func:`matopt.scale_by_shampoo`; see
      its ``b1``).
    beta: EMA of the statistics (1.0: running sum).
    exponent: p in :math:`L^{-p} G R^{-p}`.
    eps: ridge relative to the largest eigenvalue of each statistic.
    precondition_every: steps between inverse-root computations.
    start_preconditioning_step: first step using Shampoo (graft before);
      None: ``precondition_every``.
    graft: ``"adam"``, ``"rmsprop"``, ``"sgd"`` or ``"none"``.
    graft_per_block: graft each block (True, Meta's DistributedShampoo) or
      each matrix once (False, Google's distributed_shampoo).
    block_size: largest block side (None: 1024; a large int keeps whole
      matrices).
    weight_decay: decoupled weight decay λ (multiplied by η).
    cautious_weight_decay: decay only where the update and the weight agree
      in sign (Chen et al. 2025, :func:`matopt.add_decayed_weights`).
    weight_decay_mask: which leaves ``weight_decay`` reaches (a pytree of
      bools or a callable of the params, as ``optax.adamw``'s ``mask``);
      None: every leaf :func:`matopt.labels.by_role` does not label
      ``"vector"`` (matrices yes, biases and norm scales no).
    dimension_numbers: matrix views, as in :func:`matopt.scale_by_msign`.

  Returns:
    An ``optax.GradientTransformationExtraArgs``; state: ``ScaleByShampooState``
    (float32 statistics and roots per block, momentum in parameter dtype).

  References:
    Gupta, Koren, Singer, 2018. Shampoo: Preconditioned Stochastic Tensor
    Optimization. ICML.
  """
  _checks.check_not_injected("shampoo", ("weight_decay_mask", "dimension_numbers"))
  mask = _weight_decay.decay_mask("shampoo", weight_decay_mask, weight_decay)
  _checks.check_range("weight_decay", weight_decay, 0.0, float("inf"))
  _checks.check_bool("cautious_weight_decay", cautious_weight_decay)
  _checks.check_learning_rate("learning_rate", learning_rate)
  return optax.chain(
    scale_by_shampoo(
      beta=beta,
      exponent=exponent,
      eps=eps,
      precondition_every=precondition_every,
      start_preconditioning_step=start_preconditioning_step,
      b1=b1,
      graft=graft,
      graft_per_block=graft_per_block,
      block_size=block_size,
      dimension_numbers=dimension_numbers,
    ),
    add_decayed_weights(weight_decay, cautious=cautious_weight_decay, mask=mask),
    optax.scale_by_learning_rate(learning_rate),
  )
