"""Newton–Schulz coefficient presets for the matrix sign function.

Each Newton–Schulz step applies the odd quintic ``p(X) = a X + b (X Xᵀ) X +
c (X Xᵀ)² X``, i.e. the scalar map ``σ ↦ a σ + b σ³ + c σ⁵`` on every singular
value. A schedule is a ``(k, 3)`` array of ``(a, b, c)`` rows, one per step,
plus the factor by which the Frobenius norm is inflated when the input is
normalised (Polar Express's safety margin).

A preset is one :class:`Preset` record in :data:`PRESETS`, added with
:func:`register_preset`; :func:`resolve_schedule`, :func:`matopt.msign`, the
transforms, their option checks and the tests read the registry, so a new
preset needs no other edit. Whether the Gram iteration restarts is derived
from the schedule itself (``newton_schulz._gram_restart_every``).
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Mapping
from typing import NamedTuple

import numpy as np

from matopt import _checks, _registry


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


def _check_rows(coeffs: object) -> np.ndarray:
  """``coeffs`` as a finite ``(k, 3)`` float64 array with every ``a > 0`` (a ``(3,)`` row is k = 1)."""
  try:
    rows = np.asarray(coeffs, dtype=np.float64)
  except (TypeError, ValueError) as e:
    raise ValueError(f"coeffs must be one of {tuple(PRESETS)} or a numeric (k, 3) array; got {coeffs!r}.") from e
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
  return rows


@dataclasses.dataclass(frozen=True)
class Preset:
  """One named Newton–Schulz schedule: everything ``coeffs="<name>"`` means.

  Attributes:
    name: the string that selects it (``coeffs=name``).
    rows: the published ``(a, b, c)`` rows, one per step; beyond them the
      last row repeats.
    steps: the default number of iterations (``steps=None``).
    safety: the safety factor ``s`` of Amsel et al. 2025, Algorithm 1: every
      row but the last is divided by ``(s, s³, s⁵)`` and the input is
      normalised by ``s‖X‖_F``, so that round-off cannot push a singular
      value past the polynomial's stable range. 1 for none.
    source: where the coefficients come from (paper, algorithm, equation).
  """

  name: str
  rows: tuple[tuple[float, float, float], ...]
  steps: int
  safety: float = 1.0
  source: str = ""

  def __post_init__(self):
    if not isinstance(self.name, str) or not self.name:
      raise ValueError(f"Preset: name must be a non-empty string, got {self.name!r}.")
    rows = _check_rows(self.rows)
    object.__setattr__(self, "rows", tuple(tuple(float(v) for v in row) for row in rows))
    _checks.check_positive_int(f"Preset {self.name!r}: steps", self.steps)
    _checks.check_range(f"Preset {self.name!r}: safety", self.safety, 1.0, float("inf"), hi_open=True)

  def schedule(self, steps: int | None = None) -> Schedule:
    """The schedule for ``steps`` iterations (``None``: :attr:`steps`), safety factor applied."""
    rows = np.array(self.rows, dtype=np.float64)
    s = self.safety
    rows[:-1] /= np.array([s, s**3, s**5])
    return Schedule(_take(rows, self.steps if steps is None else steps), s)


_REGISTRY: dict[str, Preset] = {}
# The registry, read-only: name -> Preset, in registration order. Iterate it
# for every preset's name; add to it with register_preset.
PRESETS: Mapping[str, Preset] = types.MappingProxyType(_REGISTRY)


def register_preset(preset: Preset, *, replace: bool = False) -> Preset:
  """Adds ``preset`` to :data:`PRESETS`, so ``coeffs=preset.name`` selects it everywhere.

  Args:
    preset: the record.
    replace: allow replacing a preset of the same name (otherwise a
      ValueError, so that two libraries cannot silently shadow each other).

  Returns:
    ``preset``.
  """
  return _registry.add(
    _REGISTRY, preset, record_type=Preset, caller="register_preset", what="Newton–Schulz preset", replace=replace
  )


def unregister_preset(name: str) -> Preset:
  """Removes the preset ``name`` from :data:`PRESETS` and returns its record."""
  return _registry.remove(_REGISTRY, name, what="Newton–Schulz preset")


register_preset(
  Preset(
    name="jordan",
    # One tuple repeated, tuned to maximise the slope at zero; singular values
    # settle in a band around 1 rather than converging.
    rows=((3.4445, -4.7750, 2.0315),),
    steps=5,
    source="Jordan et al. 2024, Muon: An optimizer for hidden layers in neural networks.",
  )
)

register_preset(
  Preset(
    name="polar_express",
    # Per-step optimal (minimax) coefficients for σ ∈ [1e-3, 1]; the last
    # tuple repeats beyond 8.
    rows=(
      (8.28721201814563, -23.595886519098837, 17.300387312530933),
      (4.107059111542203, -2.9478499167379106, 0.5448431082926601),
      (3.9486908534822946, -2.908902115962949, 0.5518191394370137),
      (3.3184196573706015, -2.488488024314874, 0.51004894012372),
      (2.300652019954817, -1.6689039845747493, 0.4188073119525673),
      (1.891301407787398, -1.2679958271945868, 0.37680408948524835),
      (1.8750014808534479, -1.2500016453999487, 0.3750001645474248),
      (1.875, -1.25, 0.375),
    ),
    steps=8,
    safety=1.01,
    source="Amsel, Persson, Musco, Gower 2025, The Polar Express, arXiv:2505.16932, Algorithm 1.",
  )
)

register_preset(
  Preset(
    name="cubic",
    # σ ↦ (3σ − σ³)/2: slow start, but it converges to exactly 1.
    rows=((1.5, -0.5, 0.0),),
    steps=12,
    source="Higham 2008, Functions of Matrices, eq. 8.20 (the classical Newton–Schulz iteration).",
  )
)


def resolve_schedule(coeffs: object = "jordan", steps: int | None = None) -> Schedule:
  """Turns a preset name or an explicit array into a concrete schedule.

  Args:
    coeffs: a name in :data:`PRESETS` (built in: ``"jordan"``,
      ``"polar_express"``, ``"cubic"``) or an array-like of shape ``(k, 3)``
      (or ``(3,)`` for one tuple repeated).
    steps: number of iterations; ``None`` uses the preset's default
      (:attr:`Preset.steps`: 5, 8, 12 for the built-in ones) or ``k`` for an
      explicit array. Beyond the schedule's length its last row repeats;
      below it the schedule is truncated.

  Returns:
    The resolved :class:`Schedule`.

  Raises:
    ValueError: for an unknown preset, a badly shaped or non-finite array, or
      a ``steps`` that is not a positive int.
  """
  _checks.check_positive_int("steps", steps, none_means="the preset's default")
  if isinstance(coeffs, str):
    if coeffs not in PRESETS:
      raise ValueError(
        f"coeffs: unknown Newton–Schulz coefficient preset {coeffs!r}; valid presets"
        f" are {tuple(PRESETS)}, or pass an explicit (k, 3) array of (a, b, c)."
      )
    return PRESETS[coeffs].schedule(steps)
  rows = _check_rows(coeffs)
  return Schedule(_take(rows, len(rows) if steps is None else steps), 1.0)
