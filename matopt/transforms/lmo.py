"""Per-leaf linear minimisation oracles (Scion's update direction)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import optax
from jax.typing import ArrayLike

from matopt import _checks, _tree
from matopt.linalg import operator_norms as lmo_lib
from matopt.transforms import views as views_lib

NormSpec = str | Any | Callable[[optax.Params], Any]


def _check_norm_spec(norm: NormSpec) -> None:
  if isinstance(norm, str):
    lmo_lib.check_norm(norm)
  elif not callable(norm):
    for leaf in jax.tree_util.tree_leaves(norm):
      lmo_lib.check_norm(leaf)


def scale_by_lmo(
  norm: NormSpec,
  *,
  dimension_numbers: Any = None,
  coeffs: str | ArrayLike = "jordan",
  steps: int | None = None,
  method: str = "auto",
  normalized: bool = False,
) -> optax.GradientTransformation:
  r"""Replaces every matrix update by its LMO in a per-leaf operator norm.

  .. math::
    u \leftarrow \operatorname{lmo}_{\|\cdot\|}(g)
      = \arg\max_{\|D\| \le 1} \langle g, D \rangle

  with the norms of :func:`matopt.lmo` (any name in
  :data:`matopt.linalg.NORMS`; built in: ``"spectral"``, ``"sign"``,
  ``"colnorm"``, ``"rownorm"``, ``"frobenius"``) on each leaf's matrix view
  ``(fan_in, fan_out)``. Each leaf's LMO gets those of ``coeffs``, ``steps``,
  ``method`` and ``normalized`` that its norm takes
  (:attr:`matopt.linalg.NormInfo.options`). Followed by a radius ρ and a
  learning rate γ this is unconstrained Scion, ``W ← W − γρ·lmo(d)``
  (Pethick et al. 2025).

  Args:
    norm: one norm name for every leaf, a pytree of names with the params'
      structure, or a callable ``params -> pytree of names``. ``"spectral"``
      scales by √(fan_out/fan_in) of the leaf's matrix view, so a conv kernel
      ``(kh, kw, c_in, c_out)`` (default view: fan_in = kh·kw·c_in) gets
      √(c_out/(kh·kw·c_in))·msign, √(kh·kw) times the reference
      implementation's SpectralConv, √(c_out/c_in)/(kh·kw)·msign (kept by
      pytorch-optimizer 4.1.0 and heavyball 3.2.1): 3× its step on a 3×3
      kernel, measured to 1e-5 by ``tests/parity/test_scion.py``. Divide the
      conv leaves' radius by √(kh·kw) to take the reference's step.
    dimension_numbers: matrix view per leaf, as in :func:`scale_by_msign`.
      ``DimensionNumbers(reduction_axis=(), output_axis=0)`` views a bias as a
      ``(1, n)`` row, where ``"colnorm"`` is RMS normalisation.
    coeffs: Newton–Schulz coefficients for ``"spectral"`` leaves.
    steps: Newton–Schulz iterations for ``"spectral"`` leaves.
    method: how ``"spectral"`` leaves compute msign, as in
      :func:`scale_by_msign`: ``"auto"`` (default, as there: the Gram
      iteration where it saves at least a quarter of the FLOPs, at aspect
      ratios of about 1:3 and beyond; the plain one otherwise),
      ``"newton_schulz"``, ``"gram"`` or ``"svd"``. The matrices of
      Scion's parity tests against pytorch-optimizer and heavyball
      (``tests/parity/test_scion.py``) meet them to float32 round-off
      under ``"auto"``; pass ``"newton_schulz"`` for float32 parity with
      the references' plain iteration on wide leaves at large condition
      numbers (see :func:`matopt.msign`).
    normalized: for ``"sign"`` leaves, divide by fan_in (the reference
      implementation's normalised Sign); ignored by other norms.

  Returns:
    A stateless ``optax.GradientTransformation``.

  References:
    Pethick, Xie, Antonakopoulos, Zhu, Silveti-Falls, Cevher, 2025. Training
    Deep Learning Models with Norm-Constrained LMOs. arXiv:2502.07529
  """
  _check_norm_spec(norm)
  _checks.check_bool("normalized", normalized)
  options = {"coeffs": coeffs, "steps": steps, "method": method, "normalized": normalized}

  def options_for(name: str) -> dict:
    return {k: v for k, v in options.items() if k in lmo_lib.NORMS[name].options}

  # Checked now for every norm, not only the named ones: a callable ``norm``
  # names its norms only at init.
  for name in lmo_lib.NORMS:
    lmo_lib.check_lmo_options(name, options_for(name))

  def leaf_norms(tree):
    names = _tree.resolve_per_leaf(norm, tree, is_spec=lambda s: isinstance(s, str))
    leaves = jax.tree_util.tree_flatten_with_path(tree, is_leaf=_tree.is_masked)[0]
    for (path, leaf), name in zip(leaves, names):
      if not _tree.is_masked(leaf) and not (isinstance(name, str) and name in lmo_lib.NORMS):
        raise ValueError(
          f"scale_by_lmo: leaf {_tree.path_str(path)!r} got norm {name!r}; valid norms are {tuple(lmo_lib.NORMS)}."
        )
    return names

  def apply(m, view, name):
    del view
    return lmo_lib.lmo(m, name, **options_for(name))

  return views_lib.matrix_transform("scale_by_lmo", dimension_numbers, apply, leaf_norms, grouped=True)
