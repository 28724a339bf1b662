"""Orthogonalised updates: the matrix sign of each matrix leaf (Muon's core)."""

from __future__ import annotations

from typing import Any

import optax
from jax.typing import ArrayLike, DTypeLike

from matopt import _checks
from matopt.linalg.coefficients import resolve_schedule
from matopt.linalg.newton_schulz import _msign, check_method, compute_dtype_for
from matopt.transforms import views as views_lib


def scale_by_msign(
  *,
  coeffs: str | ArrayLike = "jordan",
  steps: int | None = None,
  dimension_numbers: Any = None,
  method: str = "auto",
  eps: float = 1e-7,
  compute_dtype: DTypeLike | None = None,
) -> optax.GradientTransformation:
  r"""Replaces every matrix update by its matrix sign.

  .. math::
    u \leftarrow \operatorname{msign}(g) = U V^\top \quad (g = U \Sigma V^\top)

  computed by Newton–Schulz (:func:`matopt.msign`) on each leaf's matrix view.
  This is steepest descent under the spectral norm, and Shampoo with no
  accumulation (R. Qiu, "Matrix-Based Optimizers", lecture, 15 October
  2025). The result has the gradient's sign convention
  (an ascent direction); chain a negative learning rate to descend.

  Args:
    coeffs: Newton–Schulz preset or ``(k, 3)`` array, see :func:`matopt.msign`.
    steps: iterations (``None``: the preset's default).
    dimension_numbers: how leaves are viewed as matrices: None (2-D as is;
      ndim > 2 as ``(prod(other axes), last axis)``), a
      :class:`matopt.DimensionNumbers` or ``optax.contrib.MuonDimensionNumbers``,
      a pytree of them, or a callable of the params returning one.
    method: ``"auto"`` (default: the Gram iteration for leaves where it
      saves at least a quarter of the FLOPs, e.g. fused QKV and MLP matrices,
      the plain one otherwise), ``"newton_schulz"``, ``"gram"`` (the same
      iteration in the small Gram space, see :func:`matopt.msign`) or
      ``"svd"`` (exact, slow). With Jordan's coefficients the Gram
      iteration lies 1e-4…2e-4 (relative Frobenius) from the polynomial at
      κ = 10³ in float32, the plain one 3e-6: pass ``"newton_schulz"`` for
      float32 parity with the references on such leaves. Transforms
      (this one and :func:`matopt.scale_by_lmo`) default to ``"auto"`` for
      speed; the pure functions :func:`matopt.msign` and :func:`matopt.lmo`
      to ``"newton_schulz"``, the formula they document.
    eps: ε in Newton–Schulz's start :math:`X / (\|X\|_F + \epsilon)`,
      as in Jordan's code (``X.norm() + 1e-7``; timm and pytorch_optimizer
      divide by :math:`\max(\|X\|_F, \epsilon)`, which is ``eps=0`` here
      wherever ‖X‖_F ≥ ε). Where an update's ‖X‖_F nears ε the result is
      no longer scale invariant (relative change against ``eps=0``: 1.5e-3
      at ‖X‖_F = 1e-4, 0.14 at 1e-6; details in :func:`matopt.msign`) and
      it goes to 0 with X; ``eps=0`` makes the transform exactly scale
      invariant (and still maps 0 to 0). :func:`matopt.muon` feeds it the
      references' EMA momentum, so ε weighs there as in their code.
    compute_dtype: dtype of the iteration (default float32 for bf16 leaves).

  Returns:
    A stateless ``optax.GradientTransformation``. A leaf with no matrix view
    (a vector or scalar) raises a ValueError naming its path: route it to
    another transform with ``optax.multi_transform`` and :mod:`matopt.labels`.

  References:
    Jordan et al., 2024. Muon: An optimizer for hidden layers in neural
    networks. https://kellerjordan.github.io/posts/muon/
  """
  schedule = resolve_schedule(coeffs, steps)
  _checks.check_range("eps", eps, 0.0, float("inf"))
  check_method(method)

  def orthogonalise(m, view):
    del view  # every view is orthogonalised the same way
    return _msign(m, schedule, method, eps, compute_dtype_for(m.dtype, compute_dtype))

  return views_lib.matrix_transform("scale_by_msign", dimension_numbers, orthogonalise, grouped=True)
