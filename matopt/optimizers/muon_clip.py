"""MuonClip (Kimi K2): Muon with RMS matching, then QK-clip on the stepped weights."""

from __future__ import annotations

from typing import Any

import optax

from matopt import _checks
from matopt.optimizers._extends import extends
from matopt.optimizers.muon import muon
from matopt.transforms.qk_clip import qk_clip


@extends(muon)
def muon_clip(
  learning_rate: optax.ScalarOrSchedule,
  *,
  tau: float = 100.0,
  query: str = "query",
  key: str = "key",
  head_dim: int | None = None,
  kv_heads: int | None = None,
  scale: str = "rms",
  **options: Any,
) -> optax.GradientTransformationExtraArgs:
  r"""MuonClip: :func:`matopt.muon` followed by :func:`matopt.qk_clip`.

  Each step is Muon's (here with Moonlight's RMS matching,
  :math:`0.2\sqrt{\max(\text{fan\_in}, \text{fan\_out})}`, so AdamW's
  learning rate and decay carry over), then for every attention head whose
  largest logit :math:`S_h` exceeded τ in this step, the stepped query and
  key weights are scaled so that its logits shrink by :math:`\gamma_h =
  \tau / S_h` (√γ each; under grouped-query attention the query takes γ).
  ``update`` needs the logits the model saw::

    tx = matopt.muon_clip(3e-4, tau=100.0, weight_decay=0.1)
    updates, state = tx.update(grads, state, params, max_logits=max_logits)

  Args:
    learning_rate: η for hidden matrices (float or schedule).
    tau, query, key, head_dim, kv_heads: as in :func:`matopt.qk_clip`
      (``head_dim`` and ``kv_heads`` fix shapes: under
      ``optax.inject_hyperparams`` name them in ``static_args``).
    scale: shape factor, as in :func:`matopt.muon` (``"rms"`` by default,
      as in K2; AdamW then runs at ``learning_rate`` itself, following its
      schedule).
    **options: every other keyword option of :func:`matopt.muon`, with its
      default there.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose ``update`` takes
    ``max_logits=`` (mirroring the params down to each attention module).

  References:
    Kimi Team, 2025. Kimi K2: Open Agentic Intelligence. arXiv:2507.20534,
    §2.1 and Algorithm 1 (MuonClip).

    Liu et al., 2025. Muon is Scalable for LLM Training. arXiv:2502.16982
  """
  _checks.check_not_injected("muon_clip", ("labels", "dimension_numbers", "weight_decay_mask"))
  _checks.check_not_injected("muon_clip", ("head_dim", "kv_heads"), numbers_too=True)
  for name, value in (("head_dim", head_dim), ("kv_heads", kv_heads)):
    _checks.check_static_int("muon_clip", name, value)
  clip = qk_clip(tau, query=query, key=key, head_dim=head_dim, kv_heads=kv_heads)
  return optax.chain(muon(learning_rate, scale=scale, **options), clip)
