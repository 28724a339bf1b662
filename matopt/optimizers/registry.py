"""The registry of matopt's full optimizers: one record per optimizer.

Everything that lists optimizers derives from :data:`OPTIMIZERS` or is
checked against it: the package's exports, the ``matopt run`` catalogue, the
test registry, ``configs/README.md`` and the README's table. Adding an
optimizer is its transform, its optimizer file and one record here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import optax

from matopt.optimizers.adamuon import adamuon
from matopt.optimizers.clipped_sgd import clipped_sgd
from matopt.optimizers.muon import muon
from matopt.optimizers.muon_clip import muon_clip
from matopt.optimizers.normuon import normuon
from matopt.optimizers.nsgd import nsgd
from matopt.optimizers.scion import scion, unconstrained_scion
from matopt.optimizers.shampoo import shampoo
from matopt.optimizers.signum import signum
from matopt.optimizers.soap import soap


@dataclasses.dataclass(frozen=True)
class OptimizerInfo:
  """What a caller must know about one optimizer beyond its signature.

  Attributes:
    name: the public name (``matopt.<name>``, the ``optimizer:`` of a config).
    factory: ``factory(learning_rate, **options)`` → a gradient transformation.
    summary: one line for tables.
    update_args: keyword arguments its ``update`` requires besides
      ``(grads, state, params)``; a trainer must supply each (e.g. QK-clip's
      ``max_logits``, the attention's per-head largest logits).
    model_options: options a model-aware caller fills from the model when the
      user does not (Scion's ``recipe``; QK-clip's ``query``, ``key``,
      ``head_dim``).
  """

  name: str
  factory: Callable[..., optax.GradientTransformation]
  summary: str
  update_args: tuple[str, ...] = ()
  model_options: tuple[str, ...] = ()


_RECORDS = (
  OptimizerInfo("muon", muon, "Muon: Newton–Schulz msign of the momentum on hidden matrices, AdamW elsewhere"),
  OptimizerInfo(
    "muon_clip",
    muon_clip,
    "MuonClip: Muon followed by QK-clip of the attention's query and key kernels",
    update_args=("max_logits",),
    model_options=("query", "key", "head_dim"),
  ),
  OptimizerInfo("normuon", normuon, "NorMuon: Muon with per-neuron second-moment normalisation after Newton–Schulz"),
  OptimizerInfo("adamuon", adamuon, "AdaMuon: Muon with an elementwise second moment after Newton–Schulz"),
  OptimizerInfo(
    "scion", scion, "Scion: constrained steepest descent with a norm's LMO per role", model_options=("recipe",)
  ),
  OptimizerInfo(
    "unconstrained_scion",
    unconstrained_scion,
    "unconstrained Scion (uSCG): LMO steps without the constraint's decay",
    model_options=("recipe",),
  ),
  OptimizerInfo("shampoo", shampoo, "Shampoo: Kronecker-factored preconditioning with grafting"),
  OptimizerInfo("soap", soap, "SOAP: Adam in Shampoo's eigenbasis"),
  OptimizerInfo("signum", signum, "Signum: the sign of an EMA of gradients (steepest descent in ℓ∞)"),
  OptimizerInfo("nsgd", nsgd, "normalised SGD with momentum: steps of fixed ℓ2 length"),
  OptimizerInfo("clipped_sgd", clipped_sgd, "SGD with momentum clipped to a fixed ℓ2 norm"),
)

OPTIMIZERS: dict[str, OptimizerInfo] = {r.name: r for r in _RECORDS}
