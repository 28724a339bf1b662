"""SOAP with decoupled weight decay."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import optax

from matopt import _checks
from matopt.optimizers import _weight_decay
from matopt.transforms.decay import add_decayed_weights
from matopt.transforms.soap import scale_by_soap


def soap(
  learning_rate: optax.ScalarOrSchedule,
  *,
  b1: float = 0.95,
  b2: float = 0.95,
  eps: float = 1e-8,
  weight_decay: float = 0.01,
  cautious_weight_decay: bool = False,
  weight_decay_mask: Any | Callable[[optax.Params], Any] | None = None,
  precondition_every: int = 10,
  start_preconditioning_step: int | None = None,
  max_precond_dim: int | None = None,
  dimension_numbers: Any = None,
) -> optax.GradientTransformationExtraArgs:
  r"""SOAP (:func:`matopt.scale_by_soap`) with decoupled weight decay.

  .. math::
    W_{t+1} = W_t - \eta\,\big(u_t + \lambda W_t\big)

  where :math:`u_t` is Adam's step in the eigenbasis of Shampoo's L and R
  (plain Adam until the bases are first built at ``start_preconditioning_step``).
  Defaults are the paper's: betas (0.95, 0.95), ε 1e-8, weight decay 0.01,
  bases refreshed every 10 steps, max_precond_dim 10000 (their learning
  rate: 3e-3), except that the first bases are built after 10 gradients
  rather than from the first one (``start_preconditioning_step=1`` restores
  the reference's zero first step; see :func:`matopt.scale_by_soap`). Works
  under ``optax.inject_hyperparams`` as is; ``max_precond_dim`` fixes the
  state's shapes and must be listed in ``static_args`` to be injected.

  ``update(grads, state, params, stats_grads=...)`` takes the statistics
  from another gradient, such as the one at labels sampled from the model
  (:func:`matopt.sampled_label_grads`; see :func:`matopt.scale_by_soap`).

  Args:
    learning_rate: η (float or schedule).
    b1: first-moment EMA.
    b2: second-moment EMA (and the statistics' EMA).
    eps: Adam's ε (added after the bias correction; see
      :func:`matopt.scale_by_soap`).
    weight_decay: decoupled weight decay λ (multiplied by η), applied to the
      weights before the step on every call, as ``optax.adamw``:
      :math:`W \leftarrow W - \eta(u + \lambda W)`. The reference ``soap.py``
      (and pytorch-optimizer's port) decays the updated weights,
      :math:`W \leftarrow (W - \eta u)(1 - \eta\lambda)`, and skips call 1
      entirely; with ``start_preconditioning_step=1`` (whose call 1 has
      ``u = 0``) matopt still decays there. The weights therefore differ by
      :math:`\eta\lambda W` after call 1 and by :math:`\eta^2\lambda u` per
      step after it (measured with η = 0.1, λ = 0.5: 5.0% after call 1,
      5.0–5.3% over 8 steps; the reference's order applied to matopt's
      direction reproduces it to 1.2e-6). At the paper's η = 3e-3,
      λ = 0.01 that is 3e-5 of the weights.
    cautious_weight_decay: decay only where the update and the weight agree
      in sign (Chen et al. 2025, :func:`matopt.add_decayed_weights`).
    weight_decay_mask: which leaves ``weight_decay`` reaches (a pytree of
      bools or a callable of the params, as ``optax.adamw``'s ``mask``);
      None: every leaf :func:`matopt.labels.by_role` does not label
      ``"vector"`` (matrices yes, biases and norm scales no).
    precondition_every: steps between basis refreshes.
    start_preconditioning_step: call after whose update the bases are first
      built (None: ``precondition_every``).
    max_precond_dim: sides longer than this are not rotated (None: 10000).
    dimension_numbers: matrix views, as in :func:`matopt.scale_by_msign`.

  Returns:
    An ``optax.GradientTransformationExtraArgs``; state: ``ScaleBySoapState``.

  References:
    Vyas et al., 2025. SOAP: Improving and Stabilizing Shampoo using Adam.
    ICLR.
  """
  _checks.check_not_injected("soap", ("weight_decay_mask", "dimension_numbers"))
  mask = _weight_decay.decay_mask("soap", weight_decay_mask, weight_decay)
  _checks.check_range("weight_decay", weight_decay, 0.0, float("inf"))
  _checks.check_bool("cautious_weight_decay", cautious_weight_decay)
  _checks.check_learning_rate("learning_rate", learning_rate)
  return optax.chain(
    scale_by_soap(
      b1=b1,
      b2=b2,
      eps=eps,
      precondition_every=precondition_every,
      start_preconditioning_step=start_preconditioning_step,
      max_precond_dim=max_precond_dim,
      dimension_numbers=dimension_numbers,
    ),
    add_decayed_weights(weight_decay, cautious=cautious_weight_decay, mask=mask),
    optax.scale_by_learning_rate(learning_rate),
  )
