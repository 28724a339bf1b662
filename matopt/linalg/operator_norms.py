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
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from matopt.linalg import lapack
from matopt.linalg.coefficients import resolve_schedule
from matopt.linalg.newton_schulz import compute_dtype_for, msign, scaled_frobenius

NORMS = ("spectral", "sign", "colnorm", "rownorm", "frobenius")
# Options each norm's LMO accepts beyond the array (checked by check_lmo_options).
LMO_OPTIONS = {
    "spectral": ("coeffs", "steps", "method", "eps", "compute_dtype"),
    "sign": ("normalized",),
    "colnorm": (),
    "rownorm": (),
    "frobenius": (),
}


def check_norm(norm: object) -> str:
  """Returns ``norm`` if it names a known norm, else raises a ValueError."""
  if not isinstance(norm, str) or norm not in NORMS:
    raise ValueError(f"Unknown norm {norm!r}; valid norms are {NORMS}.")
  return norm


def check_lmo_options(norm: str, options: dict) -> None:
  """Raises a ValueError for an option the norm's LMO does not take."""
  check_norm(norm)
  unknown = sorted(set(options) - set(LMO_OPTIONS[norm]))
  if unknown:
    raise ValueError(
        f"lmo(norm={norm!r}) takes options {LMO_OPTIONS[norm]}, got unknown"
        f" {unknown}."
    )
  if norm == "spectral":
    resolve_schedule(options.get("coeffs", "jordan"), options.get("steps"))


def _as_matrix(x: ArrayLike, what: str) -> jax.Array:
  x = jnp.asarray(x)
  if x.ndim < 2:
    raise ValueError(
        f"{what} acts on the last two axes (..., d_in, d_out); got shape"
        f" {x.shape}. View a vector as a (1, n) matrix explicitly."
    )
  return x


def _safe_l2(x: jax.Array, axis: int) -> jax.Array:
  """ℓ2 norm along ``axis`` (kept), exact for entries from 1e-30 to 1e30."""
  peak = jnp.max(jnp.abs(x), axis=axis, keepdims=True)
  safe = jnp.where(peak > 0, peak, jnp.ones_like(peak))
  y = x / safe
  return jnp.sqrt(jnp.sum(y * y, axis=axis, keepdims=True)) * safe


def _safe_divide(x: jax.Array, d: jax.Array) -> jax.Array:
  """``x / d`` with 0 wherever ``d == 0`` (a zero row maps to a zero row)."""
  nonzero = d > 0
  return jnp.where(nonzero, x / jnp.where(nonzero, d, jnp.ones_like(d)), jnp.zeros_like(x))


def _frobenius(x: jax.Array) -> jax.Array:
  """‖x‖_F over the last two axes, exact for entries from 1e-30 to 1e30."""
  _, fro = scaled_frobenius(x)
  return (fro * jnp.max(jnp.abs(x), axis=(-2, -1), keepdims=True))[..., 0, 0]


def _dims(x: jax.Array) -> tuple[int, int]:
  return x.shape[-2], x.shape[-1]


def lmo(g: ArrayLike, norm: str, **options) -> jax.Array:
  r"""Linear minimisation oracle: ``argmax_{‖D‖ ≤ 1} ⟨G, D⟩`` in ``norm``.

  See the module table for each norm's formula. The result has unit norm
  (for ``"spectral"`` up to the Newton–Schulz accuracy) and
  ``⟨g, lmo(g)⟩ = dual_norm(g)``.

  Args:
    g: gradient or momentum, shape ``(..., d_in, d_out)``.
    norm: one of ``"spectral"``, ``"sign"``, ``"colnorm"``, ``"rownorm"``,
      ``"frobenius"``.
    **options: ``"spectral"``: ``coeffs``, ``steps``, ``method``, ``eps``,
      ``compute_dtype`` as in :func:`matopt.msign`; ``"sign"``:
      ``normalized`` (divide by d_in, as the reference implementation's Sign).

  Returns:
    The ascent direction, same shape and dtype as ``g``.

  References:
    Pethick, Xie, Antonakopoulos, Zhu, Silveti-Falls, Cevher, 2025. Training
    Deep Learning Models with Norm-Constrained LMOs. arXiv:2502.07529
  """
  check_lmo_options(norm, options)
  g = _as_matrix(g, "lmo")
  d_in, d_out = _dims(g)
  if norm == "spectral":
    return (msign(g, **options) * math.sqrt(d_out / d_in)).astype(g.dtype)
  if norm == "sign":
    scale = 1.0 / d_in if options.get("normalized", False) else 1.0
    return (jnp.sign(g) * scale).astype(g.dtype)
  # Normalisations run in at least float32 so bf16 rows keep their direction.
  x = g.astype(compute_dtype_for(g.dtype, None))
  if norm == "colnorm":
    out = _safe_divide(x, _safe_l2(x, axis=-1)) * math.sqrt(d_out)
  elif norm == "rownorm":
    out = _safe_divide(x, _safe_l2(x, axis=-2)) / math.sqrt(d_in)
  else:  # frobenius
    y, fro = scaled_frobenius(x)
    out = _safe_divide(y, fro)
  return out.astype(g.dtype)


def norm(x: ArrayLike, norm: str, **options) -> jax.Array:
  """The norm whose unit ball :func:`lmo` optimises over (module table).

  Args:
    x: array of shape ``(..., d_in, d_out)``.
    norm: a norm name, see :func:`lmo`.
    **options: ``"sign"`` takes ``normalized``; other options are accepted
      for symmetry with :func:`lmo` and ignored.

  Returns:
    Array of shape ``x.shape[:-2]`` (float32 at least).
  """
  check_norm(norm)
  x = _as_matrix(x, "norm")
  x = x.astype(compute_dtype_for(x.dtype, None))
  d_in, d_out = _dims(x)
  if norm == "spectral":
    s = lapack.svdvals(x)
    return jnp.max(s, axis=-1) * math.sqrt(d_in / d_out)
  if norm == "sign":
    scale = d_in if options.get("normalized", False) else 1.0
    return jnp.max(jnp.abs(x), axis=(-2, -1)) * scale
  if norm == "colnorm":
    return jnp.max(_safe_l2(x, axis=-1)[..., 0], axis=-1) / math.sqrt(d_out)
  if norm == "rownorm":
    return jnp.max(_safe_l2(x, axis=-2)[..., 0, :], axis=-1) * math.sqrt(d_in)
  return _frobenius(x)


def dual_norm(g: ArrayLike, norm: str, **options) -> jax.Array:
  """Dual of :func:`norm`: ``max_{‖D‖≤1} ⟨g, D⟩ = ⟨g, lmo(g)⟩``.

  Args:
    g: array of shape ``(..., d_in, d_out)``.
    norm: a norm name, see :func:`lmo`.
    **options: ``"sign"`` takes ``normalized``; others are ignored.

  Returns:
    Array of shape ``g.shape[:-2]`` (float32 at least).
  """
  check_norm(norm)
  g = _as_matrix(g, "dual_norm")
  g = g.astype(compute_dtype_for(g.dtype, None))
  d_in, d_out = _dims(g)
  if norm == "spectral":
    s = lapack.svdvals(g)
    return jnp.sum(s, axis=-1) * math.sqrt(d_out / d_in)
  if norm == "sign":
    scale = 1.0 / d_in if options.get("normalized", False) else 1.0
    return jnp.sum(jnp.abs(g), axis=(-2, -1)) * scale
  if norm == "colnorm":
    return jnp.sum(_safe_l2(g, axis=-1)[..., 0], axis=-1) * math.sqrt(d_out)
  if norm == "rownorm":
    return jnp.sum(_safe_l2(g, axis=-2)[..., 0, :], axis=-1) / math.sqrt(d_in)
  return _frobenius(g)
