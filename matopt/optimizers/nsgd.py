"""M-NSGD: normalised SGD with momentum."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import optax

from matopt import _checks
from matopt.optimizers import _weight_decay
from matopt.transforms.decay import add_decayed_weights
from matopt.transforms.normalize import normalize_by_norm


def nsgd(
  learning_rate: optax.ScalarOrSchedule,
  *,
  momentum: float = 0.9,
  scope: str = "global",
  weight_decay: float = 0.0,
  cautious_weight_decay: bool = False,
  weight_decay_mask: Any | Callable[[optax.Params], Any] | None = None,
) -> optax.GradientTransformation:
  r"""Normalised SGD with momentum: steps of fixed ℓ2 length η.

  .. math::
    m_t = \beta m_{t-1} + (1 - \beta) g_t, \qquad
    W_{t+1} = W_t - \eta \Big(\frac{m_t}{\|m_t\|_2} + \lambda W_t\Big)

  Args:
    learning_rate: η (float ≥ 0 or schedule).
    momentum: β in [0, 1) (a schedule under ``optax.inject_hyperparams``).
    scope: ``"global"`` (one norm over all leaves, as in the paper) or
      ``"leaf"`` (each leaf normalised on its own, ‖·‖_F per matrix).
    weight_decay: decoupled weight decay λ (multiplied by η).
    cautious_weight_decay: decay only where the update and the weight agree
      in sign (Chen et al. 2025, :func:`matopt.add_decayed_weights`).
    weight_decay_mask: which leaves ``weight_decay`` reaches (default: not
      vectors), as in :func:`matopt.signum`.

  Returns:
    An ``optax.GradientTransformation``; state: ``optax.ema``'s.

  References:
    Cutkosky and Mehta, 2020. Momentum Improves Normalized SGD. ICML.
  """
  _checks.check_not_injected("nsgd", ("weight_decay_mask",))
  mask = _weight_decay.decay_mask("nsgd", weight_decay_mask, weight_decay)
  _checks.check_range("momentum", momentum, 0.0, 1.0, hi_open=True)
  _checks.check_range("weight_decay", weight_decay, 0.0, float("inf"))
  _checks.check_bool("cautious_weight_decay", cautious_weight_decay)
  _checks.check_learning_rate("learning_rate", learning_rate)
  return optax.chain(
    optax.ema(decay=momentum, debias=False),
    normalize_by_norm(scope=scope),
    add_decayed_weights(weight_decay, cautious=cautious_weight_decay, mask=mask),
    optax.scale_by_learning_rate(learning_rate),
  )
