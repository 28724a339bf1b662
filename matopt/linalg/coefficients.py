"""Newton–Schulz coefficient presets for the matrix sign function.

Each Newton–Schulz step applies the odd quintic ``p(X) = a X + b (X Xᵀ) X +
c (X Xᵀ)² X``, i.e. the scalar map ``σ ↦ a σ + b σ³ + c σ⁵`` on every singular
value. A schedule is a ``(k, 3)`` array of ``(a, b, c)`` rows, one per step,
plus the factor by which the Frobenius norm is inflated when the input is
normalised (Polar Express's safety margin).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

# Jordan et al. 2024 (Muon): one tuple repeated, tuned to maximise the slope
# at zero; singular values settle in a band around 1 rather than converging.
_JORDAN = (3.4445, -4.7750, 2.0315)

# Amsel et al. 2025, "The Polar Express", Algorithm 1: per-step optimal
# (minimax) coefficients for σ ∈ [1e-3, 1]; the last tuple repeats beyond 8.
_POLAR_EXPRESS = (
    (8.28721201814563, -23.595886519098837, 17.300387312530933),
    (4.107059111542203, -2.9478499167379106, 0.5448431082926601),
    (3.9486908534822946, -2.908902115962949, 0.5518191394370137),
    (3.3184196573706015, -2.488488024314874, 0.51004894012372),
    (2.300652019954817, -1.6689039845747493, 0.4188073119525673),
    (1.891301407787398, -1.2679958271945868, 0.37680408948524835),
    (1.8750014808534479, -1.2500016453999487, 0.3750001645474248),
    (1.875, -1.25, 0.375),
)
# Algorithm 1's safety factor: every tuple but the last is divided by
# (1.01, 1.01³, 1.01⁵) and the input is normalised by ‖X‖_F · 1.01, so that
# round-off cannot push a singular value past the polynomial's stable range.
_POLAR_EXPRESS_SAFETY = 1.01

# The classical cubic Newton–Schulz iteration σ ↦ (3σ − σ³)/2 (Higham 2008,
# "Functions of Matrices", eq. 8.20): slow start, but it converges to exactly 1.
_CUBIC = (1.5, -0.5, 0.0)

PRESETS = ("jordan", "polar_express", "cubic")
DEFAULT_STEPS = {"jordan": 5, "polar_express": 8, "cubic": 12}


class Schedule(NamedTuple):
  """A resolved Newton–Schulz schedule.

  Attributes:
    coeffs: ``(steps, 3)`` float64 array of ``(a, b, c)`` per step.
    norm_scale: factor applied to ‖X‖_F when normalising the input.
  """

  coeffs: np.ndarray
  norm_scale: float


def _take(rows: np.ndarray, steps: int) -> np.ndarray:
  """First ``steps`` rows of ``rows``; the last row repeats beyond its end."""
  if steps <= len(rows):
    return rows[:steps]
  extra = np.repeat(rows[-1:], steps - len(rows), axis=0)
  return np.concatenate([rows, extra], axis=0)


def _check_steps(steps: object) -> None:
  if steps is None:
    return
  if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)):
    raise ValueError(
        f"steps must be a positive int or None (the preset's default), got"
        f" {steps!r} of type {type(steps).__name__}."
    )
  if steps < 1:
    raise ValueError(f"steps must be >= 1, got {steps}.")


def resolve_schedule(coeffs: object = "jordan", steps: int | None = None) -> Schedule:
  """Turns a preset name or an explicit array into a concrete schedule.

  Args:
    coeffs: ``"jordan"``, ``"polar_express"``, ``"cubic"`` or an array-like
      of shape ``(k, 3)`` (or ``(3,)`` for one tuple repeated).
    steps: number of iterations; ``None`` uses the preset's default (5, 8, 12)
      or ``k`` for an explicit array. Beyond the schedule's length its last
      row repeats; below it the schedule is truncated.

  Returns:
    The resolved :class:`Schedule`.

  Raises:
    ValueError: for an unknown preset, a badly shaped or non-finite array, or
      a ``steps`` that is not a positive int.
  """
  _check_steps(steps)
  if isinstance(coeffs, str):
    if coeffs not in PRESETS:
      raise ValueError(
          f"coeffs: unknown Newton–Schulz coefficient preset {coeffs!r}; valid presets"
          f" are {PRESETS}, or pass an explicit (k, 3) array of (a, b, c)."
      )
    n = DEFAULT_STEPS[coeffs] if steps is None else steps
    if coeffs == "jordan":
      return Schedule(_take(np.array([_JORDAN]), n), 1.0)
    if coeffs == "cubic":
      return Schedule(_take(np.array([_CUBIC]), n), 1.0)
    s = _POLAR_EXPRESS_SAFETY
    rows = np.array(_POLAR_EXPRESS, dtype=np.float64)
    rows[:-1] /= np.array([s, s**3, s**5])
    return Schedule(_take(rows, n), s)
  try:
    rows = np.asarray(coeffs, dtype=np.float64)
  except (TypeError, ValueError) as e:
    raise ValueError(
        f"coeffs must be one of {PRESETS} or a numeric (k, 3) array; got"
        f" {coeffs!r}."
    ) from e
  if rows.ndim == 1:
    rows = rows[None]
  if rows.ndim != 2 or rows.shape[1] != 3 or rows.shape[0] < 1:
    raise ValueError(
        f"coeffs: explicit Newton–Schulz coefficients must have shape (k, 3) with k >= 1"
        f" (one (a, b, c) row per step), got shape {np.shape(coeffs)}."
    )
  if not np.all(np.isfinite(rows)):
    raise ValueError(f"coeffs: Newton–Schulz coefficients must be finite, got {rows}.")
  if np.any(rows[:, 0] <= 0):
    raise ValueError(
        "coeffs: every Newton–Schulz step needs a > 0 (the linear coefficient), or"
        f" small singular values change sign; got a = {rows[:, 0]}."
    )
  n = len(rows) if steps is None else steps
  return Schedule(_take(rows, n), 1.0)
