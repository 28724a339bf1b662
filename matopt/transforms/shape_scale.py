"""Shape-dependent update scales for orthogonalised (Muon) updates."""

from __future__ import annotations

import math
from typing import Any

import jax.numpy as jnp
import optax

from matopt import _checks
from matopt.transforms import views as views_lib

SCALES = ("shape", "rms", "none")


def shape_factor(fan_in: int, fan_out: int, scale: str, rms: float = 0.2) -> float:
  """The multiplier :func:`scale_by_shape` applies to one matrix.

  Args:
    fan_in: matrix rows in Flax layout (reduction size).
    fan_out: matrix columns (output size).
    scale: ``"shape"``: √max(1, fan_out/fan_in) (Jordan et al. 2024, written
      there as √max(1, rows/cols) in PyTorch's (out, in) layout; for conv
      filters see :func:`scale_by_shape`); ``"rms"``:
      ``rms·√max(fan_in, fan_out)`` (Liu et al. 2025: an orthogonal matrix has
      RMS 1/√max(A, B), so this gives the update AdamW's typical RMS ≈ 0.2);
      ``"none"``: 1.
    rms: target RMS for ``"rms"``.
  """
  if scale == "shape":
    return math.sqrt(max(1.0, fan_out / fan_in))
  if scale == "rms":
    return rms * math.sqrt(max(fan_in, fan_out))
  return 1.0


def scale_by_shape(
  scale: str = "shape",
  *,
  rms: float = 0.2,
  dimension_numbers: Any = None,
) -> optax.GradientTransformation:
  r"""Multiplies each matrix update by a factor of its shape.

  .. math::
    u \leftarrow s(\text{fan\_in}, \text{fan\_out})\, u, \qquad
    s = \begin{cases}
      \sqrt{\max(1, \text{fan\_out}/\text{fan\_in})} & \texttt{"shape"} \\
      \text{rms}\cdot\sqrt{\max(\text{fan\_in}, \text{fan\_out})} & \texttt{"rms"}
    \end{cases}

  Args:
    scale: ``"shape"``, ``"rms"`` or ``"none"``. fan_in and fan_out are
      those of the matrix view that Newton–Schulz orthogonalises. For a
      conv filter ``"shape"`` therefore departs from Jordan's
      ``muon_update`` (muon-optimizer 0.1.0), which orthogonalises the
      flattened ``(out, in·kh·kw)`` view but evaluates
      ``max(1, grad.size(-2) / grad.size(-1))**0.5`` on the 4-D grad
      ``(out, in, kh, kw)``, i.e. √max(1, kh/kw), 1 for square kernels: a
      (64, 4, 3, 3) filter (Flax ``(3, 3, 4, 64)``) gets √(64/36) = 4/3
      here and 1 there (``tests/parity/test_muon_family.py``). timm's
      ``adjust_lr_fn="original"`` and pytorch_optimizer's Muon take the
      flattened view's factor, as here; ``"none"`` gives Jordan's factor
      for square kernels.
    rms: target update RMS for ``"rms"`` (0.2 matches AdamW, Liu et al. 2025).
    dimension_numbers: matrix view per leaf, as in
      :func:`matopt.scale_by_msign` (batch axes share one factor).

  Returns:
    A stateless ``optax.GradientTransformation``.

  References:
    Jordan et al., 2024. Muon. https://kellerjordan.github.io/posts/muon/

    Liu et al., 2025. Muon is Scalable for LLM Training. arXiv:2502.16982
  """
  if scale not in SCALES:
    raise ValueError(f"Unknown update scale {scale!r}; valid scales are {SCALES}.")
  _checks.check_range("rms", rms, 0.0, float("inf"), lo_open=True)

  def apply(m, view):
    factor = shape_factor(view.fan_in, view.fan_out, scale, rms)
    return m * jnp.asarray(factor, m.dtype)

  return views_lib.matrix_transform("scale_by_shape", dimension_numbers, apply)
