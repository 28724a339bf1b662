r"""Linear minimisation oracles, their norms and dual norms (Pethick et al. 2025).

All functions act on the last two axes of an array in Flax layout
``(..., d_in, d_out)`` (``y = x @ W``). Scion's table is written for PyTorch's
``A ∈ R^{d_out×d_in}``; transcribed to ``W = Aᵀ`` it reads:

==============  ==================================  =============================================  ========================================
norm            ‖W‖                                 lmo(G) = argmax_{‖D‖≤1} ⟨G, D⟩                 dual ‖G‖_*
==============  ==================================  =============================================  ========================================
``spectral``    √(d_in/d_out) ‖W‖_{S∞}              √(d_out/d_in) · U Vᵀ                           √(d_out/d_in) ‖G‖_{S1}
``sign``        max |W_ij|                          sign(G)                                        Σ |G_ij|
``colnorm``     max_i ‖W[i,:]‖₂ / √d_out            √d_out · G[i,:] / ‖G[i,:]‖₂                    √d_out Σ_i ‖G[i,:]‖₂
``rownorm``     max_j √d_in ‖W[:,j]‖₂               G[:,j] / (√d_in ‖G[:,j]‖₂)                     Σ_j ‖G[:,j]‖₂ / √d_in
``frobenius``   ‖W‖_F                               G / ‖G‖_F                                      ‖G‖_F
==============  ==================================  =============================================  ========================================

``sign`` with ``normalized=True`` is the reference implementation's
normalised Sign: the LMO is divided by d_in, the norm multiplied by it.

The LMO returned here is the *ascent* direction (``⟨G, lmo(G)⟩ = ‖G‖_* ≥ 0``);
Scion's update subtracts it. Zero rows, columns or matrices map to zero.

Each norm is one :class:`NormInfo` record in :data:`NORMS` (its LMO, norm,
dual norm and the options its LMO takes), added with :func:`register_norm`:
:func:`lmo`, :func:`norm`, :func:`dual_norm`, :func:`matopt.scale_by_lmo`,
their option checks and the tests dispatch through the registry, so a new
norm needs no other edit.
"""

from __future__ import annotations

import dataclasses
import math
import types
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from matopt import _checks, _registry
from matopt.linalg import lapack
from matopt.linalg.coefficients import resolve_schedule
from matopt.linalg.newton_schulz import check_method, compute_dtype_for, msign
from matopt.linalg.safe_norms import safe_divide, safe_l2, scaled_l2


@dataclasses.dataclass(frozen=True)
class NormInfo:
  """One operator norm: its LMO, the norm and its dual, on ``(..., d_in, d_out)`` arrays.

  Attributes:
    name: the string that selects it (``lmo(g, name)``, ``scale_by_lmo(name)``).
    lmo: ``(g, **options) -> ascent direction`` of shape ``g.shape``. ``g``
      arrives in its own dtype (the function picks its compute dtype, e.g.
      with ``compute_dtype_for``); the result is cast back to ``g.dtype``.
    norm: ``(x, **options) -> x.shape[:-2]``; ``x`` arrives in float32 at least.
    dual_norm: ``(g, **options) -> g.shape[:-2]``, with ``⟨g, lmo(g)⟩ =
      dual_norm(g)``; ``g`` arrives in float32 at least.
    options: the keyword options :attr:`lmo` takes (``norm`` and
      ``dual_norm`` get those of them the caller passed; other names raise in
      :func:`lmo` and are ignored by :func:`norm` and :func:`dual_norm`).
    check_options: ``(options) -> None``, raising a ValueError for a bad
      value (run when an LMO is built or called); None for no check.
    description: one line: what the norm is and where it is used.
    reference: where it comes from.
  """

  name: str
  lmo: Callable[..., jax.Array]
  norm: Callable[..., jax.Array]
  dual_norm: Callable[..., jax.Array]
  options: tuple[str, ...] = ()
  check_options: Callable[[dict], None] | None = None
  description: str = ""
  reference: str = ""

  def __post_init__(self):
    if not isinstance(self.name, str) or not self.name:
      raise ValueError(f"NormInfo: name must be a non-empty string, got {self.name!r}.")
    for field in ("lmo", "norm", "dual_norm"):
      if not callable(getattr(self, field)):
        raise TypeError(f"NormInfo {self.name!r}: {field} must be callable, got {getattr(self, field)!r}.")
    object.__setattr__(self, "options", tuple(self.options))


_REGISTRY: dict[str, NormInfo] = {}
# The registry, read-only: name -> NormInfo, in registration order. Iterate it
# for every norm's name; add to it with register_norm.
NORMS: Mapping[str, NormInfo] = types.MappingProxyType(_REGISTRY)


def register_norm(info: NormInfo, *, replace: bool = False) -> NormInfo:
  """Adds ``info`` to :data:`NORMS`, so ``norm=info.name`` selects it everywhere.

  Args:
    info: the record.
    replace: allow replacing a norm of the same name (otherwise a ValueError).

  Returns:
    ``info``.
  """
  return _registry.add(_REGISTRY, info, record_type=NormInfo, caller="register_norm", what="norm", replace=replace)


def unregister_norm(name: str) -> NormInfo:
  """Removes the norm ``name`` from :data:`NORMS` and returns its record."""
  return _registry.remove(_REGISTRY, name, what="norm")


def check_norm(norm: object) -> str:
  """Returns ``norm`` if it names a registered norm, else raises a ValueError."""
  if not isinstance(norm, str) or norm not in NORMS:
    raise ValueError(f"Unknown norm {norm!r}; valid norms are {tuple(NORMS)}.")
  return norm


def check_lmo_options(norm: str, options: dict) -> None:
  """Raises a ValueError for an option the norm's LMO does not take, or a bad value."""
  info = NORMS[check_norm(norm)]
  unknown = sorted(set(options) - set(info.options))
  if unknown:
    raise ValueError(f"lmo(norm={norm!r}) takes options {info.options}, got unknown {unknown}.")
  if info.check_options is not None:
    info.check_options(options)


def _as_matrix(x: ArrayLike, what: str) -> jax.Array:
  x = jnp.asarray(x)
  if x.ndim < 2:
    raise ValueError(
      f"{what} acts on the last two axes (..., d_in, d_out); got shape"
      f" {x.shape}. View a vector as a (1, n) matrix explicitly."
    )
  return x


def _wide(x: jax.Array) -> jax.Array:
  """``x`` in float32 at least: bf16 rows keep their direction through a normalisation."""
  return x.astype(compute_dtype_for(x.dtype, None))


def _frobenius(x: jax.Array) -> jax.Array:
  return safe_l2(x, axis=(-2, -1))


# --- The built-in norms (Pethick et al. 2025, Table 2; module table) ---------


def _check_spectral_options(options: dict) -> None:
  resolve_schedule(options.get("coeffs", "jordan"), options.get("steps"))
  check_method(options.get("method", "newton_schulz"))
  _checks.check_range("eps", options.get("eps", 0.0), 0.0, float("inf"))


def _spectral_lmo(g, **options):
  d_in, d_out = g.shape[-2:]
  return msign(g, **options) * math.sqrt(d_out / d_in)


def _spectral_norm(x, **_):
  d_in, d_out = x.shape[-2:]
  return jnp.max(lapack.svdvals(x), axis=-1) * math.sqrt(d_in / d_out)


def _spectral_dual(g, **_):
  d_in, d_out = g.shape[-2:]
  return jnp.sum(lapack.svdvals(g), axis=-1) * math.sqrt(d_out / d_in)


def _sign_lmo(g, normalized=False):
  return jnp.sign(g) * (1.0 / g.shape[-2] if normalized else 1.0)


def _sign_norm(x, normalized=False):
  return jnp.max(jnp.abs(x), axis=(-2, -1)) * (x.shape[-2] if normalized else 1.0)


def _sign_dual(g, normalized=False):
  return jnp.sum(jnp.abs(g), axis=(-2, -1)) * (1.0 / g.shape[-2] if normalized else 1.0)


def _colnorm_lmo(g):
  x = _wide(g)
  return safe_divide(x, safe_l2(x, axis=-1, keepdims=True)) * math.sqrt(x.shape[-1])


def _colnorm_norm(x):
  return jnp.max(safe_l2(x, axis=-1), axis=-1) / math.sqrt(x.shape[-1])


def _colnorm_dual(g):
  return jnp.sum(safe_l2(g, axis=-1), axis=-1) * math.sqrt(g.shape[-1])


def _rownorm_lmo(g):
  x = _wide(g)
  return safe_divide(x, safe_l2(x, axis=-2, keepdims=True)) / math.sqrt(x.shape[-2])


def _rownorm_norm(x):
  return jnp.max(safe_l2(x, axis=-2), axis=-1) * math.sqrt(x.shape[-2])


def _rownorm_dual(g):
  return jnp.sum(safe_l2(g, axis=-2), axis=-1) / math.sqrt(g.shape[-2])


def _frobenius_lmo(g):
  y, fro, _ = scaled_l2(_wide(g), axis=(-2, -1))
  return safe_divide(y, fro)


_SCION = (
  "Pethick, Xie, Antonakopoulos, Zhu, Silveti-Falls, Cevher, 2025. Training Deep Learning"
  " Models with Norm-Constrained LMOs. arXiv:2502.07529, Table 2."
)

register_norm(
  NormInfo(
    "spectral",
    _spectral_lmo,
    _spectral_norm,
    _spectral_dual,
    options=("coeffs", "steps", "method", "eps", "compute_dtype"),
    check_options=_check_spectral_options,
    description="√(d_in/d_out)·‖W‖_{S∞}; LMO √(d_out/d_in)·msign (hidden layers; Muon's direction).",
    reference=_SCION,
  )
)
register_norm(
  NormInfo(
    "sign",
    _sign_lmo,
    _sign_norm,
    _sign_dual,
    options=("normalized",),
    description="max |W_ij| (× d_in if normalized); LMO sign(G) (÷ d_in): the output layer.",
    reference=_SCION,
  )
)
register_norm(
  NormInfo(
    "colnorm",
    _colnorm_lmo,
    _colnorm_norm,
    _colnorm_dual,
    description="max_i ‖W[i,:]‖₂/√d_out; LMO normalises each input's fan-out row: embeddings.",
    reference=_SCION,
  )
)
register_norm(
  NormInfo(
    "rownorm",
    _rownorm_lmo,
    _rownorm_norm,
    _rownorm_dual,
    description="max_j √d_in‖W[:,j]‖₂; LMO normalises each output's fan-in column.",
    reference=_SCION,
  )
)
register_norm(
  NormInfo(
    "frobenius",
    _frobenius_lmo,
    _frobenius,
    _frobenius,
    description="‖W‖_F; LMO G/‖G‖_F (normalised SGD per matrix).",
    reference=_SCION,
  )
)


def _passed(info: NormInfo, options: dict) -> dict:
  """The options ``info``'s functions take, of those passed."""
  return {k: v for k, v in options.items() if k in info.options}


def lmo(g: ArrayLike, norm: str, **options) -> jax.Array:
  r"""Linear minimisation oracle: ``argmax_{‖D‖ ≤ 1} ⟨G, D⟩`` in ``norm``.

  See the module table for each norm's formula. The result has unit norm
  (for ``"spectral"`` up to the Newton–Schulz accuracy) and
  ``⟨g, lmo(g)⟩ = dual_norm(g)``.

  Args:
    g: gradient or momentum, shape ``(..., d_in, d_out)``.
    norm: a name in :data:`NORMS`; built in: ``"spectral"``, ``"sign"``,
      ``"colnorm"``, ``"rownorm"``, ``"frobenius"``.
    **options: the norm's :attr:`NormInfo.options`. ``"spectral"``:
      ``coeffs``, ``steps``, ``method``, ``eps``, ``compute_dtype`` as in
      :func:`matopt.msign`, with its defaults (``method="newton_schulz"``,
      the plain iteration: a pure function evaluates the documented
      polynomial; :func:`matopt.scale_by_lmo` defaults to ``"auto"``);
      ``"sign"``: ``normalized`` (divide by d_in, as the reference
      implementation's Sign).

  Returns:
    The ascent direction, same shape and dtype as ``g``.

  References:
    Pethick, Xie, Antonakopoulos, Zhu, Silveti-Falls, Cevher, 2025. Training
    Deep Learning Models with Norm-Constrained LMOs. arXiv:2502.07529
  """
  check_lmo_options(norm, options)
  g = _as_matrix(g, "lmo")
  return NORMS[norm].lmo(g, **options).astype(g.dtype)


def norm(x: ArrayLike, norm: str, **options) -> jax.Array:
  """The norm whose unit ball :func:`lmo` optimises over (module table).

  Args:
    x: array of shape ``(..., d_in, d_out)``.
    norm: a norm name, see :func:`lmo`.
    **options: those of the norm's LMO options that change the norm
      (``"sign"``: ``normalized``); others are accepted for symmetry with
      :func:`lmo` and ignored.

  Returns:
    Array of shape ``x.shape[:-2]`` (float32 at least).
  """
  info = NORMS[check_norm(norm)]
  return info.norm(_wide(_as_matrix(x, "norm")), **_passed(info, options))


def dual_norm(g: ArrayLike, norm: str, **options) -> jax.Array:
  """Dual of :func:`norm`: ``max_{‖D‖≤1} ⟨g, D⟩ = ⟨g, lmo(g)⟩``.

  Args:
    g: array of shape ``(..., d_in, d_out)``.
    norm: a norm name, see :func:`lmo`.
    **options: as in :func:`norm` (``"sign"`` takes ``normalized``).

  Returns:
    Array of shape ``g.shape[:-2]`` (float32 at least).
  """
  info = NORMS[check_norm(norm)]
  return info.dual_norm(_wide(_as_matrix(g, "dual_norm")), **_passed(info, options))
