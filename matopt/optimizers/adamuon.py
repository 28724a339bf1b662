"""AdaMuon: Muon with an elementwise second moment on orthogonalised updates."""

from __future__ import annotations

from typing import Any

import optax

from matopt import _checks
from matopt.optimizers._extends import extends
from matopt.optimizers.muon import muon
from matopt.transforms.adamuon import scale_by_adamuon


@extends(muon, sets=("adaptive",))
def adamuon(
  learning_rate: optax.ScalarOrSchedule,
  *,
  b2: float = 0.999,
  eps: float = 1e-8,
  bias_correction: bool = True,
  scale: str = "rms",
  **options: Any,
) -> optax.GradientTransformation:
  r"""AdaMuon: :func:`matopt.muon` with :func:`matopt.scale_by_adamuon` after Newton–Schulz.

  For a hidden matrix:

  .. math::
    O_t = \operatorname{msign}(N_t), \quad
    V_t = b_2 V_{t-1} + (1-b_2)\, O_t^{\odot 2}, \quad
    \hat O_t = \frac{O_t}{\sqrt{V_t/c_t} + \epsilon}
    \\
    W_{t+1} = W_t - \eta\,\Big(0.2\sqrt{\max(\text{fan\_in}, \text{fan\_out})}
      \cdot \sqrt{\min(\text{fan\_in}, \text{fan\_out})}\,\frac{\hat O_t}{\|\hat O_t\|_F + \epsilon} + \lambda W_t\Big)

  with :math:`N_t` Muon's (Nesterov) momentum and :math:`c_t = 1 - b_2^t`
  (1 with ``bias_correction=False``). ``scale="rms"`` (the reference's
  0.2·√max) lets AdaMuon use AdamW's learning rate: the update's RMS is
  0.2, Adam's typical one (the paper's RMS-aligned rescaling).

  Two versions of AdaMuon are in use, both expressible here:

  - The first (the reference code's first release, Chongjie-Si/AdaMuon
    ``adamuon.py`` at commit 3b84e03): the rule above with its own
    ``b2 = 0.999``, bias correction and ε = 1e-8. This is the default, and
    what both implementations on the package index implement:
    ``pytorch_optimizer.AdaMuon`` (EMA momentum at ``betas[0]``, no
    Nesterov, bias correction; here ``momentum=betas[0], nesterov=False,
    b2=betas[1]``) and timm's ``Muon(algo="adamuon")`` (no bias
    correction: ``bias_correction=False``; one ε for Newton–Schulz and the
    adaptive step). ``tests/parity/test_muon_family.py`` matches both
    over 5 steps to 5e-6…1.2e-5 of the update on all but 3 of 7,360
    entries; at those few, where :math:`O_t` is within a few orders of ε
    of 0 and the elementwise division turns its round-off into a change of
    percents, up to 1.8e-2.
  - The current reference code (and the paper's later version) orthogonalises
    the momentum's sign (sign-stabilised update), take the momentum β as
    the second moment's rate and drop the bias correction:
    :math:`O_t = \operatorname{msign}(\operatorname{sign}(N_t))`,
    :math:`V_t = \beta V_{t-1} + (1-\beta)\,O_t^{\odot 2}`. That is
    ``adamuon(lr, sign_momentum=True, b2=momentum, bias_correction=False)``
    (ε = 1e-8 as there). No package implements it, so it is checked only
    against transcriptions (``tests/optimizers/test_update_rules.py``,
    ``tests/transforms/test_muon_variants.py``).

  Args:
    learning_rate: η for hidden matrices (float or schedule).
    b2: EMA rate of the second moment (first version 0.999; the current
      reference code uses ``momentum``).
    eps: ε (reference 1e-8).
    bias_correction: divide :math:`V_t` by :math:`1 - b_2^t` (the first
      version, pytorch_optimizer) or not (the current reference code,
      timm); see :func:`matopt.scale_by_adamuon`.
    scale: shape factor, as in :func:`matopt.muon` (here ``"rms"`` by
      default, the reference's 0.2·√max).
    **options: every other keyword option of :func:`matopt.muon`, with its
      default there (AdamW's rate follows ``learning_rate``), except
      ``adaptive``, which is AdaMuon's step. ``sign_momentum=True`` gives the
      current version's sign-stabilised update; ``dimension_numbers`` views
      hidden leaves for the adaptive step too.

  Returns:
    An ``optax.GradientTransformation`` (``optax.multi_transform`` state).

  References:
    Si, Zhang and Shen, 2025. AdaMuon: Adaptive Muon Optimizer.
    arXiv:2507.11005
  """
  # Before scale_by_adamuon sees a scheduled dimension_numbers (muon checks the rest).
  _checks.check_not_injected("adamuon", ("labels", "dimension_numbers", "weight_decay_mask"))
  adaptive = scale_by_adamuon(
    b2=b2, eps=eps, bias_correction=bias_correction, dimension_numbers=options.get("dimension_numbers")
  )
  return muon(learning_rate, scale=scale, adaptive=adaptive, **options)
