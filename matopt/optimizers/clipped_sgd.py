"""M-ClippedSGD: SGD with momentum whose step is clipped in ℓ2."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import optax

from matopt import _checks
from matopt.optimizers import _weight_decay
from matopt.transforms.decay import add_decayed_weights
from matopt.transforms.normalize import clip_by_norm


def clipped_sgd(
  learning_rate: optax.ScalarOrSchedule,
  *,
  max_norm: float = 1.0,
  momentum: float = 0.9,
  scope: str = "global",
  weight_decay: float = 0.0,
  cautious_weight_decay: bool = False,
  weight_decay_mask: Any | Callable[[optax.Params], Any] | None = None,
) -> optax.GradientTransformation:
  r"""SGD with momentum, the momentum clipped to ℓ2 norm at most λ.

  .. math::
    m_t = \beta m_{t-1} + (1 - \beta) g_t, \qquad
    W_{t+1} = W_t - \eta \Big(\min\big(1, \tfrac{\lambda}{\|m_t\|_2}\big) m_t
      + \mu W_t\Big)

  The EMA form keeps ‖m‖ on the scale of a gradient, so λ reads as a
  gradient-norm threshold whatever β is.

  Args:
    learning_rate: η (float ≥ 0 or schedule).
    max_norm: λ > 0.
    momentum: β in [0, 1) (a schedule under ``optax.inject_hyperparams``).
    scope: ``"global"`` (one norm over all leaves) or ``"leaf"``.
    weight_decay: decoupled weight decay μ (multiplied by η).
    cautious_weight_decay: decay only where the update and the weight agree
      in sign (Chen et al. 2025, :func:`matopt.add_decayed_weights`).
    weight_decay_mask: which leaves ``weight_decay`` reaches (default: not
      vectors), as in :func:`matopt.signum`.

  Returns:
    An ``optax.GradientTransformation``; state: ``optax.ema``'s.

  References:
    Zhang, He, Sra, Jadbabaie, 2020. Why Gradient Clipping Accelerates
    Training: A Theoretical Justification for Adaptivity. ICLR.
  """
  _checks.check_not_injected("clipped_sgd", ("weight_decay_mask",))
  mask = _weight_decay.decay_mask("clipped_sgd", weight_decay_mask, weight_decay)
  _checks.check_range("momentum", momentum, 0.0, 1.0, hi_open=True)
  _checks.check_range("weight_decay", weight_decay, 0.0, float("inf"))
  _checks.check_bool("cautious_weight_decay", cautious_weight_decay)
  _checks.check_learning_rate("learning_rate", learning_rate)
  return optax.chain(
    optax.ema(decay=momentum, debias=False),
    clip_by_norm(max_norm, scope=scope),
    add_decayed_weights(weight_decay, cautious=cautious_weight_decay, mask=mask),
    optax.scale_by_learning_rate(learning_rate),
  )
