"""NorMuon's neuron-wise normalisation of orthogonalised updates."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from matopt import _checks
from matopt.transforms import views as views_lib


class ScaleByNorMuonState(NamedTuple):
  """Per leaf, the EMA of each output neuron's mean squared update,
  shape ``(batch, 1, fan_out)`` of the leaf's matrix view (float32)."""

  nu: optax.Updates


def _frobenius(m: jax.Array) -> jax.Array:
  return jnp.sqrt(jnp.sum(m * m, axis=(-2, -1), keepdims=True))


def scale_by_normuon(
  *,
  b2: float = 0.95,
  eps: float = 1e-10,
  dimension_numbers: Any = None,
) -> optax.GradientTransformation:
  r"""Normalises each output neuron of an (orthogonalised) update, keeping its norm.

  For each matrix ``O`` of a leaf's view (``(fan_in, fan_out)``, Flax layout),
  with :math:`j` an output neuron (a column here, a row in PyTorch's layout):

  .. math::
    v_j \leftarrow b_2 v_j + (1 - b_2)\,\tfrac{1}{\text{fan\_in}}\textstyle\sum_i O_{ij}^2,
    \qquad
    \hat O_{ij} = \frac{O_{ij}}{\sqrt{v_j} + \epsilon}, \qquad
    u = \frac{\|O\|_F}{\|\hat O\|_F + \epsilon}\,\hat O

  Chain it after :func:`matopt.scale_by_msign`: Newton–Schulz leaves the
  neurons' update sizes unequal, and this evens them out (an Adam-like
  second moment with one entry per neuron, not per weight), then restores
  the orthogonalised update's Frobenius norm so learning rates carry over
  from Muon. No bias correction, as in the reference code.

  Args:
    b2: EMA rate of the per-neuron second moment, in [0, 1).
    eps: added to √v and to the norm (reference: 1e-10).
    dimension_numbers: matrix views, as in :func:`matopt.scale_by_msign`.

  Returns:
    An ``optax.GradientTransformation`` with :class:`ScaleByNorMuonState`. A
    leaf with no matrix view raises a ValueError naming it.

  References:
    Li et al., 2025. NorMuon: Making Muon more efficient and scalable.
    arXiv:2510.05491 (github.com/zichongli5/NorMuon, ``normuon_update``).
  """
  _checks.check_range("b2", b2, 0.0, 1.0, hi_open=True)
  _checks.check_range("eps", eps, 0.0, float("inf"))
  views_lib.check_dimension_numbers_spec(dimension_numbers)

  def views_of(tree):
    return views_lib.resolve_views(dimension_numbers, tree, transform="scale_by_normuon")

  def zeros(leaf, view):
    # Shaped (and, on a mesh, sharded) like the update's neuron means, so the
    # state keeps one layout across steps and the step compiles once.
    return jnp.zeros_like(jnp.sum(view.to_matrices(leaf), axis=-2, keepdims=True), jnp.float32)

  def init_fn(params):
    return ScaleByNorMuonState(nu=views_lib.init_per_leaf(zeros, params, views_of(params)))

  def step(leaf, nu, view):
    o = view.to_matrices(leaf).astype(jnp.float32)
    nu = b2 * nu + (1.0 - b2) * jnp.mean(o * o, axis=-2, keepdims=True)
    normalised = o / (jnp.sqrt(nu) + eps)
    normalised = normalised * (_frobenius(o) / (_frobenius(normalised) + eps))
    return view.from_matrices(normalised).astype(leaf.dtype), nu

  def update_fn(updates, state, params=None):
    del params
    updates, nu = views_lib.map_with_state(step, updates, state.nu, views_of(updates))
    return updates, ScaleByNorMuonState(nu=nu)

  return optax.GradientTransformation(init_fn, update_fn)
