"""AdaMuon: Muon with an elementwise second moment on orthogonalised updates."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import optax
from jax.typing import ArrayLike

from matopt import _checks
from matopt.optimizers.muon import muon
from matopt.transforms.adamuon import scale_by_adamuon


def adamuon(
    learning_rate: optax.ScalarOrSchedule,
    *,
    b2: float = 0.999,
    eps: float = 1e-8,
    momentum: float = 0.95,
    nesterov: bool = True,
    coeffs: str | ArrayLike = "jordan",
    steps: int | None = None,
    scale: str = "rms",
    sign_momentum: bool = False,
    weight_decay: float = 0.0,
    cautious_weight_decay: bool = False,
    weight_decay_mask: Any | Callable[[optax.Params], Any] | None = None,
    dimension_numbers: Any = None,
    adam_learning_rate: optax.ScalarOrSchedule | None = None,
    adam_lr_ratio: float | None = None,
    aux: optax.GradientTransformation | None = None,
    labels: Callable[[optax.Params], Any] | Any | None = None,
) -> optax.GradientTransformation:
  r"""AdaMuon: :func:`matopt.muon` with :func:`matopt.scale_by_adamuon` after Newton–Schulz.

  For a hidden matrix:

  .. math::
    O_t = \operatorname{msign}(N_t), \quad
    V_t = b_2 V_{t-1} + (1-b_2)\, O_t^{\odot 2}, \quad
    \hat O_t = \frac{O_t}{\sqrt{V_t/(1-b_2^t)} + \epsilon}
    \\
    W_{t+1} = W_t - \eta\,\Big(0.2\sqrt{\max(\text{fan\_in}, \text{fan\_out})}
      \cdot \sqrt{\min(\text{fan\_in}, \text{fan\_out})}\,\frac{\hat O_t}{\|\hat O_t\|_F} + \lambda W_t\Big)

  with :math:`N_t` Muon's (Nesterov) momentum. ``scale="rms"`` (the
  reference's 0.2·√max) lets AdaMuon use AdamW's learning rate: the update's
  RMS is 0.2, Adam's typical one (the paper's RMS-aligned rescaling).

  The paper's later version (v2) orthogonalises the momentum's sign,
  :math:`O_t = \operatorname{msign}(\operatorname{sign}(N_t))`;
  ``sign_momentum=True`` does so. It is off by default because the public
  reference code (Chongjie-Si/AdaMuon, which the tests transcribe) does not.

  Args:
    learning_rate: η for hidden matrices (float or schedule).
    b2: EMA rate of the second moment (reference 0.999).
    eps: ε (reference 1e-8).
    momentum, nesterov, coeffs, steps, weight_decay, cautious_weight_decay,
      weight_decay_mask, adam_learning_rate, adam_lr_ratio, aux, labels: as in
      :func:`matopt.muon` (AdamW's rate follows ``learning_rate``).
    scale: shape factor, as in :func:`matopt.muon` (here ``"rms"`` by default, the reference's 0.2·√max).
    sign_momentum: orthogonalise sign(N_t) instead of N_t (the paper's sign-stabilised update).
    dimension_numbers: matrix views of hidden leaves (also the adaptive step's).

  Returns:
    An ``optax.GradientTransformation`` (``optax.multi_transform`` state).

  References:
    Si, Zhang and Shen, 2025. AdaMuon: Adaptive Muon Optimizer.
    arXiv:2507.11005
  """
  # Before scale_by_adamuon sees a scheduled dimension_numbers (muon checks the rest).
  _checks.check_not_injected("adamuon", ("labels", "dimension_numbers", "weight_decay_mask"))
  return muon(learning_rate, momentum=momentum, nesterov=nesterov, coeffs=coeffs, steps=steps, scale=scale,
              sign_momentum=sign_momentum,
              weight_decay=weight_decay, cautious_weight_decay=cautious_weight_decay, weight_decay_mask=weight_decay_mask,
              dimension_numbers=dimension_numbers, adaptive=scale_by_adamuon(b2=b2, eps=eps, dimension_numbers=dimension_numbers),
              adam_learning_rate=adam_learning_rate, adam_lr_ratio=adam_lr_ratio, aux=aux, labels=labels)
