"""Signum (M-SignSGD): sign of the momentum."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import optax

from matopt import _checks
from matopt.optimizers import _weight_decay
from matopt.transforms.decay import add_decayed_weights
from matopt.transforms.sign import scale_by_sign


def signum(
  learning_rate: optax.ScalarOrSchedule,
  *,
  momentum: float = 0.9,
  weight_decay: float = 0.0,
  cautious_weight_decay: bool = False,
  weight_decay_mask: Any | Callable[[optax.Params], Any] | None = None,
) -> optax.GradientTransformation:
  r"""Signum: steepest descent in ℓ∞ on an EMA of gradients.

  .. math::
    m_t = \beta m_{t-1} + (1 - \beta) g_t, \qquad
    W_{t+1} = W_t - \eta \big(\operatorname{sign}(m_t) + \lambda W_t\big)

  Args:
    learning_rate: η (float ≥ 0 or schedule).
    momentum: β in [0, 1) (0: signSGD; a schedule under ``optax.inject_hyperparams``).
    weight_decay: decoupled weight decay λ (multiplied by η).
    cautious_weight_decay: decay only where the update and the weight agree
      in sign (Chen et al. 2025, :func:`matopt.add_decayed_weights`).
    weight_decay_mask: which leaves ``weight_decay`` reaches, as
      ``optax.adamw``'s ``mask``: a pytree of bools with the params'
      structure, or a callable of the params giving one (True: decay).
      None (default): every leaf :func:`matopt.labels.by_role` does not
      label ``"vector"`` (matrices yes, biases and norm scales no: nanoGPT's
      and Hugging Face Trainer's practice). Under
      ``optax.inject_hyperparams`` name a callable here in ``static_args``.

  Returns:
    An ``optax.GradientTransformation``; state: ``optax.ema``'s (m in the
    parameters' dtype).

  References:
    Bernstein, Wang, Azizzadenesheli, Anandkumar, 2018. signSGD: Compressed
    Optimisation for Non-Convex Problems. ICML.
  """
  _checks.check_not_injected("signum", ("weight_decay_mask",))
  mask = _weight_decay.decay_mask("signum", weight_decay_mask, weight_decay)
  _checks.check_range("momentum", momentum, 0.0, 1.0, hi_open=True)
  _checks.check_range("weight_decay", weight_decay, 0.0, float("inf"))
  _checks.check_bool("cautious_weight_decay", cautious_weight_decay)
  _checks.check_learning_rate("learning_rate", learning_rate)
  return optax.chain(
    optax.ema(decay=momentum, debias=False),
    scale_by_sign(),
    add_decayed_weights(weight_decay, cautious=cautious_weight_decay, mask=mask),
    optax.scale_by_learning_rate(learning_rate),
  )
