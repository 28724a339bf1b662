"""Elementwise sign: steepest descent in the ℓ∞ geometry (signSGD)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def scale_by_sign() -> optax.GradientTransformation:
  r"""Replaces each update by its elementwise sign.

  .. math::
    u \leftarrow \operatorname{sign}(g)

  The steepest-descent direction under the ℓ∞ norm (A. Beznosikov, "Matrix
  Optimization and Muon", part 2, lecture, 24 October 2025: the upper
  bound with ‖·‖²_∞ gives ``x ← x − γ sign(∇f)``). Applied after momentum it is
  Signum. Works on leaves of any rank and keeps their dtype; ``sign(0) = 0``.

  Returns:
    A stateless ``optax.GradientTransformation``.

  References:
    Bernstein, Wang, Azizzadenesheli, Anandkumar, 2018. signSGD: Compressed
    Optimisation for Non-Convex Problems. ICML.
  """

  def update_fn(updates, state, params=None):
    del params
    return jax.tree.map(jnp.sign, updates), state

  return optax.GradientTransformation(optax.init_empty_state, update_fn)
