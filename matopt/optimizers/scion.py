"""Scion and unconstrained Scion: momentum LMO steps in per-role operator norms."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax.numpy as jnp
import optax
from jax.typing import ArrayLike

from matopt import _checks, _tree
from matopt import labels as labels_lib
from matopt.optimizers._ns_steps import check_ns_steps
from matopt.transforms.lmo import scale_by_lmo
from matopt.transforms.partition import partition
from matopt.transforms.views import DimensionNumbers

# Radii ρ per role. "language": the reference nanoGPT recipe (ρ = 50 for
# blocks, Sign head at 60·50 = 3000 with normalised Sign; lr 2⁻¹²).
# "image": the reference MLP recipe (ρ = 1, Sign head at 2¹⁰; lr 2⁻⁶).
DEFAULT_RADII = {
  "language": {"embedding": 50.0, "hidden": 50.0, "head": 3000.0, "vector": 50.0},
  "image": {"embedding": 1.0, "hidden": 1.0, "head": 1024.0, "vector": 1.0},
}


def _vector_view(params: optax.Params) -> Any:
  """Views every vector/scalar leaf as a (1, n) row (fan_in = 1).

  Leading axes are batch axes: a stacked ``(L, d)`` bias or norm scale (from
  ``nn.scan`` / ``nnx.vmap``) is L rows, each normalised on its own as the
  separate layers' vectors would be, not one row across all layers.
  """
  return _tree.map_with_path(
    lambda _, leaf: DimensionNumbers(reduction_axis=(), output_axis=tuple(range(jnp.ndim(leaf)))[-1:]),
    params,
  )


def _scion(
  learning_rate: optax.ScalarOrSchedule,
  *,
  constrained: bool,
  momentum: float,
  recipe: str,
  norms: Mapping[str, str] | None,
  radii: Mapping[str, float] | None,
  coeffs: str | ArrayLike,
  ns_steps: int | None,
  labels: Callable[[optax.Params], Any] | Any | None,
  dimension_numbers: Any,
) -> optax.GradientTransformation:
  name = "scion" if constrained else "unconstrained_scion"
  _checks.check_not_injected(name, ("labels", "dimension_numbers"))
  _checks.check_not_injected(name, ("coeffs",), numbers_too=True)
  check_ns_steps(name, ns_steps)
  _checks.check_labels(name, labels)
  _checks.check_range("momentum", momentum, 0.0, 1.0, hi_open=True)
  _checks.check_learning_rate("learning_rate", learning_rate)
  role_norms = labels_lib.scion_recipe(recipe)
  role_radii = dict(DEFAULT_RADII[recipe])
  for given, name in ((norms, "norms"), (radii, "radii")):
    unknown = sorted(set(given or {}) - set(labels_lib.ROLES))
    if unknown:
      raise ValueError(f"{name} has unknown roles {unknown}; valid roles are {labels_lib.ROLES}.")
  role_norms.update(norms or {})
  role_radii.update(radii or {})
  for role, radius in role_radii.items():
    _checks.check_range(f"radii[{role!r}]", radius, 0.0, float("inf"), lo_open=True)

  def role_transform(role: str) -> optax.GradientTransformation:
    return optax.chain(
      # d ← β d + (1 − β) g: Pethick et al. 2025, Algorithm 1's d ← (1 − α) d + α g
      # with α = 1 − β, so that momentum means the decay here as in muon and signum.
      optax.ema(decay=momentum, debias=False),
      scale_by_lmo(
        role_norms[role],
        dimension_numbers=_vector_view if role == "vector" else dimension_numbers,
        coeffs=coeffs,
        steps=ns_steps,
        normalized=True,
      ),
      optax.scale(role_radii[role]),
      # SCG: W ← (1 − γ) W − γ ρ lmo(d) = W − γ (ρ lmo(d) + W).
      optax.add_decayed_weights(1.0) if constrained else optax.identity(),
      optax.scale_by_learning_rate(learning_rate),
    )

  return partition(
    {role: role_transform(role) for role in labels_lib.ROLES},
    labels_lib.by_role if labels is None else labels,
  )


_ARGS_DOC = """
  Args:
    learning_rate: γ (float ≥ 0 or schedule); every role's step follows it.
    momentum: β in [0, 1), the decay of the average ``d ← β d + (1 − β) g``
      (0: no momentum), as in :func:`matopt.muon` and :func:`matopt.signum`.
      The paper and the reference code write α = 1 − β, the new gradient's
      weight (``d ← (1 − α) d + α g``; their nanoGPT value α = 0.1, the
      default β = 0.9 here). May be a schedule under
      ``optax.inject_hyperparams``.
    recipe: ``"language"`` (ColNorm → Spectral → Sign) or ``"image"``
      (Spectral → Spectral → Sign), Pethick et al. 2025, Recommendation 3.1.
      Vectors (biases, norm scales) use ColNorm on their ``(1, n)`` view,
      i.e. RMS normalisation (the reference's BiasRMS). A conv kernel under
      Spectral is its ``(kh·kw·c_in, c_out)`` matrix: √(kh·kw) times the
      reference's SpectralConv step (3× for 3×3), see :func:`matopt.scale_by_lmo`.
    norms: role → norm overrides of the recipe, e.g. ``{"head": "rownorm"}``.
    radii: role → ρ overrides; defaults per recipe: language
      ``{embedding 50, hidden 50, head 3000, vector 50}``, image
      ``{1, 1, 1024, 1}``. Sign LMOs are normalised by fan_in, as in the
      reference implementation.
    coeffs: Newton–Schulz preset for Spectral roles.
    ns_steps: Newton–Schulz iterations for Spectral roles (``None``: the
      preset's default; fixes a loop: under ``optax.inject_hyperparams``
      name it in ``static_args``).
    labels: label function (or tree) giving each leaf a role; None means
      :func:`matopt.labels.by_role`. Under ``optax.inject_hyperparams`` name
      a callable here in ``static_args`` (optax treats callables as
      schedules; scheduling it raises a ValueError saying so).
    dimension_numbers: matrix views of the embedding, hidden and head
      leaves, see :func:`matopt.scale_by_lmo` (needed for 3-D leaves such as
      a scanned stack ``(L, d_in, d_out)``: ``DimensionNumbers(1, 2)``);
      vectors keep their ``(1, n)`` rows. A callable goes in ``static_args``
      under ``optax.inject_hyperparams``, as ``labels``.

  Returns:
    An ``optax.GradientTransformation`` (``optax.multi_transform`` state with
    one EMA ``d`` per leaf in the parameters' dtype).

  References:
    Pethick, Xie, Antonakopoulos, Zhu, Silveti-Falls, Cevher, 2025. Training
    Deep Learning Models with Norm-Constrained LMOs. arXiv:2502.07529
"""


def scion(
  learning_rate: optax.ScalarOrSchedule,
  *,
  momentum: float = 0.9,
  recipe: str = "language",
  norms: Mapping[str, str] | None = None,
  radii: Mapping[str, float] | None = None,
  coeffs: str | ArrayLike = "jordan",
  ns_steps: int | None = None,
  labels: Callable[[optax.Params], Any] | Any | None = None,
  dimension_numbers: Any = None,
) -> optax.GradientTransformation:
  return _scion(
    learning_rate,
    constrained=True,
    momentum=momentum,
    recipe=recipe,
    norms=norms,
    radii=radii,
    coeffs=coeffs,
    ns_steps=ns_steps,
    labels=labels,
    dimension_numbers=dimension_numbers,
  )


def unconstrained_scion(
  learning_rate: optax.ScalarOrSchedule,
  *,
  momentum: float = 0.9,
  recipe: str = "language",
  norms: Mapping[str, str] | None = None,
  radii: Mapping[str, float] | None = None,
  coeffs: str | ArrayLike = "jordan",
  ns_steps: int | None = None,
  labels: Callable[[optax.Params], Any] | Any | None = None,
  dimension_numbers: Any = None,
) -> optax.GradientTransformation:
  return _scion(
    learning_rate,
    constrained=False,
    momentum=momentum,
    recipe=recipe,
    norms=norms,
    radii=radii,
    coeffs=coeffs,
    ns_steps=ns_steps,
    labels=labels,
    dimension_numbers=dimension_numbers,
  )


scion.__doc__ = (
  r"""Scion (SCG): constrained steps along per-role LMOs.

  .. math::
    d_t = \beta d_{t-1} + (1 - \beta) g_t, \qquad
    W_{t+1} = (1 - \gamma) W_t - \gamma \rho \operatorname{lmo}(d_t)

  The iterates stay in the norm ball of radius ρ (the update is a convex
  combination of W and a point of the ball): weight decay of 1 in disguise.
  That contraction is the method, not a regulariser, so it reaches every
  role, vectors included (the norm ball bounds them too); there is no
  ``weight_decay`` option to mask.
"""
  + _ARGS_DOC
)

unconstrained_scion.__doc__ = (
  r"""Unconstrained Scion (uSCG): steps along per-role LMOs.

  .. math::
    d_t = \beta d_{t-1} + (1 - \beta) g_t, \qquad
    W_{t+1} = W_t - \gamma \rho \operatorname{lmo}(d_t)
"""
  + _ARGS_DOC
)
