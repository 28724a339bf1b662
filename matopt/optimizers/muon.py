"""Muon: orthogonalised Nesterov momentum on hidden matrices, AdamW elsewhere."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import optax
from jax.typing import ArrayLike

from matopt import _checks
from matopt import labels as labels_lib
from matopt.optimizers._ns_steps import check_ns_steps
from matopt.transforms.decay import add_decayed_weights
from matopt.transforms.momentum import scale_by_ema_weight
from matopt.transforms.msign import scale_by_msign
from matopt.transforms.partition import partition
from matopt.transforms.precision import in_float32_for_float16
from matopt.transforms.shape_scale import scale_by_shape
from matopt.transforms.sign import scale_by_sign

# Jordan's MuonWithAuxAdam example trains hidden matrices with Muon at 0.02
# and everything else with AdamW at 3e-4 (github.com/KellerJordan/Muon):
# the AdamW rate is this fraction of Muon's under the "shape" factor.
SHAPE_ADAM_LR_RATIO = 3e-4 / 0.02


def _times(ratio: Any, rate: optax.ScalarOrSchedule) -> optax.ScalarOrSchedule:
  """``ratio · rate``, a schedule if ``rate`` is one (also a traced array under inject_hyperparams)."""
  if callable(rate):
    return lambda count: ratio * rate(count)
  return ratio * rate


def _adamw(learning_rate, weight_decay, cautious, mask) -> optax.GradientTransformation:
  """optax.adamw with Jordan's settings and the hidden matrices' decay rule."""
  return optax.chain(
    in_float32_for_float16(optax.scale_by_adam(b1=0.9, b2=0.95, eps=1e-10)),
    add_decayed_weights(weight_decay, cautious=cautious, mask=mask),
    optax.scale_by_learning_rate(learning_rate),
  )


def muon(
  learning_rate: optax.ScalarOrSchedule,
  *,
  momentum: float = 0.95,
  nesterov: bool = True,
  coeffs: str | ArrayLike = "jordan",
  ns_steps: int | None = None,
  scale: str = "shape",
  weight_decay: float = 0.0,
  cautious_weight_decay: bool = False,
  weight_decay_mask: Any | Callable[[optax.Params], Any] | None = None,
  dimension_numbers: Any = None,
  sign_momentum: bool = False,
  adaptive: optax.GradientTransformation | None = None,
  adam_learning_rate: optax.ScalarOrSchedule | None = None,
  adam_lr_ratio: float | None = None,
  aux: optax.GradientTransformation | None = None,
  labels: Callable[[optax.Params], Any] | Any | None = None,
) -> optax.GradientTransformation:
  r"""Muon on ``"hidden"`` leaves; AdamW on embedding, head and vector leaves.

  For a hidden matrix with gradient :math:`G_t` (η = ``learning_rate``,
  β = ``momentum``, λ = ``weight_decay``, s the shape factor):

  .. math::
    M_t = \beta M_{t-1} + G_t, \qquad
    N_t = \begin{cases} G_t + \beta M_t & \text{nesterov} \\ M_t \end{cases}
    \\
    W_{t+1} = W_t - \eta\,\big(s\cdot\operatorname{msign}(N_t) + \lambda W_t\big)

  with :math:`s = \sqrt{\max(1, \text{fan\_out}/\text{fan\_in})}` for
  ``scale="shape"`` (Jordan et al. 2024) or
  :math:`s = 0.2\sqrt{\max(\text{fan\_in}, \text{fan\_out})}` for
  ``scale="rms"`` (Liu et al. 2025; lets Muon share AdamW's learning rate).
  Newton–Schulz starts from :math:`(1-\beta)N_t`, the references' EMA
  form of the same momentum, so its ε (added to the Frobenius norm, see
  :func:`matopt.msign`) weighs as in their code and the update matches
  Jordan's ``SingleDeviceMuon`` at every gradient scale (to 3e-6 of the
  update at ‖G‖_F ≈ 40, 1e-4 and 1e-6, ``tests/parity/test_muon_family.py``;
  without the factor 8e-3 at 1e-4 and 0.19 at 1e-6, measured). timm's and
  pytorch_optimizer's Muon divide by :math:`\max(\|N\|_F, \epsilon)`
  instead: ``eps=0`` of :func:`matopt.scale_by_msign` for ‖N‖_F ≥ ε, a
  relative difference of about 15·ε/‖N‖_F from the default (1.5e-3 at
  ‖N‖_F = 1e-4, measured).

  Embedding, head and vector leaves take AdamW at the rate
  :math:`\eta_{\text{adam}} = r\,\eta` (r = ``adam_lr_ratio``) at every
  step, so one schedule given as ``learning_rate`` shapes every leaf's step
  (a warmup starts every leaf at 0). By default r = 3e-4 / 0.02 = 0.015
  (Jordan's 0.02 for Muon and 3e-4 for AdamW) for ``scale="shape"`` and
  ``"none"``, and r = 1 for ``scale="rms"``, whose purpose is that Muon and
  AdamW share one rate (Liu et al. 2025). An explicit ``adam_learning_rate``
  (float or schedule) replaces :math:`r\,\eta`.

  ``weight_decay`` reaches matrices (hidden, embedding and head leaves), not
  vectors (biases, norm scales), unless ``weight_decay_mask`` says otherwise.

  Args:
    learning_rate: Muon's step size η (float ≥ 0 or schedule); AdamW's is
      derived from it (see above).
    momentum: β in [0, 1) (a schedule under ``optax.inject_hyperparams``).
    nesterov: use Nesterov momentum (Jordan's default; dion found it off better).
    coeffs: Newton–Schulz preset or array, see :func:`matopt.msign`.
    ns_steps: Newton–Schulz iterations (``None``: the preset's default;
      ``steps`` of :func:`matopt.scale_by_msign`).
    scale: ``"shape"``, ``"rms"`` or ``"none"``, the factor of the matrix
      view Newton–Schulz orthogonalises. On conv filters ``"shape"`` departs
      from Jordan's ``muon_update``, whose factor reads the 4-D grad's last
      two axes (kh/kw): √(64/36) = 4/3 here against 1 there for a
      (64, 4, 3, 3) filter; see :func:`matopt.scale_by_shape`.
    weight_decay: decoupled weight decay λ (multiplied by each leaf's rate).
    cautious_weight_decay: decay only where the update and the weight agree
      in sign (Chen et al. 2025, :func:`matopt.add_decayed_weights`).
    weight_decay_mask: which leaves ``weight_decay`` reaches, as
      ``optax.adamw``'s ``mask``: a pytree of bools with the params'
      structure, or a callable of the params giving one (True: decay).
      None (default): every leaf not labelled ``"vector"`` by ``labels``
      (matrices yes, biases and norm scales no: nanoGPT's and Hugging Face
      Trainer's practice). Does not reach a user-given ``aux``. Under
      ``optax.inject_hyperparams`` name a callable here in ``static_args``.
    dimension_numbers: matrix views of hidden leaves, see
      :func:`matopt.scale_by_msign`.
    sign_momentum: take the elementwise sign of the momentum before
      Newton–Schulz, :math:`O_t = \operatorname{msign}(\operatorname{sign}(N_t))`
      (AdaMuon's sign-stabilised update, Si et al. 2025 v2): one outlier
      entry can no longer dominate the spectrum.
    adaptive: a transform applied to the orthogonalised update before the
      shape factor, such as :func:`matopt.scale_by_normuon` or
      :func:`matopt.scale_by_adamuon` (see :func:`matopt.normuon`,
      :func:`matopt.adamuon`); None for plain Muon.
    adam_learning_rate: rate of the default AdamW for the other roles (float
      ≥ 0 or schedule); None (default): ``adam_lr_ratio · learning_rate``,
      following ``learning_rate``'s schedule, or its injected value under
      ``optax.inject_hyperparams``.
    adam_lr_ratio: r in :math:`\eta_{\text{adam}} = r\,\eta` (≥ 0); None
      (default): 0.015 for ``scale="shape"`` / ``"none"``, 1 for ``"rms"``.
      Give it or ``adam_learning_rate``, not both.
    aux: transform for embedding, head and vector leaves; default
      ``optax.adamw(adam_learning_rate, b1=0.9, b2=0.95, eps=1e-10,
      weight_decay=weight_decay, mask=weight_decay_mask)`` (Jordan's
      MuonWithAuxAdam settings; its decay cautious too with
      ``cautious_weight_decay``); its moments are float32 for float16
      leaves, whose range loses g² and ε, and the leaf's dtype otherwise.
    labels: label function (or tree) giving each leaf a role in
      ``("embedding", "hidden", "head", "vector")``; None means
      :func:`matopt.labels.by_role`. Under ``optax.inject_hyperparams`` name
      a callable here in ``static_args`` (optax treats callables as
      schedules); so for ``dimension_numbers`` and ``weight_decay_mask``.
      Scheduling one of them, or injecting ``ns_steps`` or an array ``coeffs``,
      raises a ValueError saying so.

  Returns:
    An ``optax.GradientTransformation``; state is ``optax.multi_transform``'s,
    momentum in the parameters' dtype.

  References:
    Jordan et al., 2024. Muon: An optimizer for hidden layers in neural
    networks. https://kellerjordan.github.io/posts/muon/

    Liu et al., 2025. Muon is Scalable for LLM Training. arXiv:2502.16982

  Examples:
    >>> import jax.numpy as jnp, optax, matopt
    >>> params = {"Dense_0": {"kernel": jnp.ones((4, 3)), "bias": jnp.zeros(3)}}
    >>> tx = matopt.muon(0.02)
    >>> state = tx.init(params)
    >>> updates, state = tx.update(params, state, params)
  """
  _checks.check_not_injected("muon", ("labels", "dimension_numbers", "weight_decay_mask"))
  _checks.check_not_injected("muon", ("coeffs",), numbers_too=True)
  check_ns_steps("muon", ns_steps)
  _checks.check_labels("muon", labels)
  _checks.check_mask("muon", "weight_decay_mask", weight_decay_mask)
  _checks.check_range("momentum", momentum, 0.0, 1.0, hi_open=True)
  _checks.check_range("weight_decay", weight_decay, 0.0, float("inf"))
  _checks.check_bool("cautious_weight_decay", cautious_weight_decay)
  _checks.check_learning_rate("learning_rate", learning_rate)
  _checks.check_bool("nesterov", nesterov)
  _checks.check_bool("sign_momentum", sign_momentum)
  if adam_lr_ratio is None:
    adam_lr_ratio = 1.0 if scale == "rms" else SHAPE_ADAM_LR_RATIO
  elif adam_learning_rate is not None:
    raise ValueError(
      f"muon: give adam_learning_rate ({adam_learning_rate!r}) or adam_lr_ratio"
      f" ({adam_lr_ratio!r}), not both: the ratio derives the AdamW rate from learning_rate."
    )
  else:
    _checks.check_range("adam_lr_ratio", adam_lr_ratio, 0.0, float("inf"))
  if adam_learning_rate is None:
    adam_learning_rate = _times(adam_lr_ratio, learning_rate)
  else:
    _checks.check_learning_rate("adam_learning_rate", adam_learning_rate)
  hidden = optax.chain(
    optax.trace(decay=momentum, nesterov=nesterov),
    scale_by_ema_weight(momentum),
    scale_by_sign() if sign_momentum else optax.identity(),
    scale_by_msign(coeffs=coeffs, steps=ns_steps, dimension_numbers=dimension_numbers),
    optax.identity() if adaptive is None else adaptive,
    scale_by_shape(scale, dimension_numbers=dimension_numbers),
    add_decayed_weights(weight_decay, cautious=cautious_weight_decay, mask=weight_decay_mask),
    optax.scale_by_learning_rate(learning_rate),
  )
  vector_aux = aux
  if aux is None:
    aux = _adamw(adam_learning_rate, weight_decay, cautious_weight_decay, weight_decay_mask)
    # The default mask is the routing itself: the "vector" label is not decayed.
    vector_aux = aux if weight_decay_mask is not None else _adamw(adam_learning_rate, 0.0, False, None)
  return partition(
    {"hidden": hidden, "embedding": aux, "head": aux, "vector": vector_aux},
    labels_lib.by_role if labels is None else labels,
  )
