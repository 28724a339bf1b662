"""NorMuon: Muon with neuron-wise normalised updates."""

from __future__ import annotations

from typing import Any

import optax

from matopt import _checks
from matopt.optimizers._extends import extends
from matopt.optimizers.muon import muon
from matopt.transforms.normuon import scale_by_normuon


@extends(muon, sets=("adaptive",))
def normuon(
  learning_rate: optax.ScalarOrSchedule,
  *,
  b2: float = 0.95,
  eps: float = 1e-10,
  **options: Any,
) -> optax.GradientTransformation:
  r"""NorMuon: :func:`matopt.muon` with :func:`matopt.scale_by_normuon` after Newton–Schulz.

  For a hidden matrix (Flax layout, :math:`j` an output neuron):

  .. math::
    O_t = \operatorname{msign}(N_t), \quad
    v_{t,j} = b_2 v_{t-1,j} + (1-b_2)\,\operatorname{mean}_i O_{t,ij}^2, \quad
    \hat O_t = \frac{\|O_t\|_F}{\|O_t / (\sqrt{v_t} + \epsilon)\|_F}\,\frac{O_t}{\sqrt{v_t} + \epsilon}
    \\
    W_{t+1} = W_t - \eta\,(s \cdot \hat O_t + \lambda W_t)

  with :math:`N_t` Muon's (Nesterov) momentum and :math:`s` its shape factor.
  This is the official code's rule and ``pytorch_optimizer.NorMuon`` with
  its default ``update_scale="preserve_norm"``, which
  ``tests/parity/test_muon_family.py`` matches over 5 steps to 3e-6 of the
  update. Its ``update_scale="match_rms"`` (the paper's Algorithm 1: the
  normalised update rescaled to Frobenius norm :math:`0.2\sqrt{mn}`, RMS
  0.2) has no option here; ``scale="rms"`` comes near it, since
  :math:`\|O_t\|_F \approx \sqrt{\min(m, n)}` only up to the band of
  Jordan's Newton–Schulz (singular values from ~0.1 to 1.2, see
  :func:`matopt.msign`).

  Args:
    learning_rate: η for hidden matrices (float or schedule).
    b2: EMA rate of the per-neuron second moment (reference 0.95).
    eps: ε of the normalisation (reference 1e-10).
    **options: every other keyword option of :func:`matopt.muon`, with its
      default there (``scale="shape"``: the reference's
      √max(1, fan_out/fan_in); AdamW's rate follows ``learning_rate``),
      except ``adaptive``, which is NorMuon's step. ``dimension_numbers``
      views hidden leaves for the adaptive step too.

  Returns:
    An ``optax.GradientTransformation`` (``optax.multi_transform`` state).

  References:
    Li et al., 2025. NorMuon: Making Muon more efficient and scalable.
    arXiv:2510.05491
  """
  # Before scale_by_normuon sees a scheduled dimension_numbers (muon checks the rest).
  _checks.check_not_injected("normuon", ("labels", "dimension_numbers", "weight_decay_mask"))
  adaptive = scale_by_normuon(b2=b2, eps=eps, dimension_numbers=options.get("dimension_numbers"))
  return muon(learning_rate, adaptive=adaptive, **options)
