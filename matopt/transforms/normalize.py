"""Norm-based rescaling of whole updates: normalisation (NSGD) and clipping."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from matopt import _checks
from matopt.linalg.safe_norms import safe_divide, safe_l2

SCOPES = ("global", "leaf")


def _safe_norm(x: jax.Array) -> jax.Array:
  """ℓ2 norm of a whole array in float32+, exact for entries 1e-30 … 1e30."""
  return safe_l2(x.astype(jnp.promote_types(x.dtype, jnp.float32)))


def _norms(updates, scope: str):
  """Per-leaf norms, or the global norm broadcast to every leaf."""
  leaf_norms = jax.tree.map(_safe_norm, updates)
  if scope == "leaf":
    return leaf_norms
  values = jax.tree.leaves(leaf_norms)
  if not values:
    return leaf_norms
  stacked = jnp.stack(values)
  total = _safe_norm(stacked)
  return jax.tree.map(lambda _: total, leaf_norms)


def _check_scope(scope: str) -> None:
  if scope not in SCOPES:
    raise ValueError(f"Unknown scope {scope!r}; valid scopes are {SCOPES}.")


def _rescale(updates, factors):
  return jax.tree.map(lambda u, f: u * f.astype(u.dtype), updates, factors)


def normalize_by_norm(*, scope: str = "global") -> optax.GradientTransformation:
  r"""Divides updates by their ℓ2 norm (normalised SGD).

  .. math::
    u \leftarrow \frac{g}{\|g\|_2}

  with ‖g‖₂ over all leaves (``scope="global"``) or over each leaf. A zero
  update stays zero.

  Args:
    scope: ``"global"`` or ``"leaf"``.

  Returns:
    A stateless ``optax.GradientTransformation``.

  References:
    Cutkosky and Mehta, 2020. Momentum Improves Normalized SGD. ICML.
  """
  _check_scope(scope)

  def update_fn(updates, state, params=None):
    del params
    norms = _norms(updates, scope)
    factors = jax.tree.map(lambda n: safe_divide(jnp.ones_like(n), n), norms)
    return _rescale(updates, factors), state

  return optax.GradientTransformation(optax.init_empty_state, update_fn)


def clip_by_norm(max_norm: float, *, scope: str = "global") -> optax.GradientTransformation:
  r"""Scales updates down to ℓ2 norm at most ``max_norm`` (gradient clipping).

  .. math::
    u \leftarrow \min\left(1, \frac{\lambda}{\|g\|_2}\right) g

  Unlike ``optax.clip_by_global_norm`` the norm is computed without
  overflow for entries up to 1e30 (and per leaf with ``scope="leaf"``).

  Args:
    max_norm: λ > 0.
    scope: ``"global"`` or ``"leaf"``.

  Returns:
    A stateless ``optax.GradientTransformation``.

  References:
    Pascanu, Mikolov, Bengio, 2013. On the difficulty of training recurrent
    neural networks. ICML.
  """
  _check_scope(scope)
  _checks.check_range("max_norm", max_norm, 0.0, float("inf"), lo_open=True)

  def update_fn(updates, state, params=None):
    del params
    norms = _norms(updates, scope)
    factors = jax.tree.map(lambda n: max_norm / jnp.maximum(n, max_norm), norms)
    return _rescale(updates, factors), state

  return optax.GradientTransformation(optax.init_empty_state, update_fn)
