"""Property-based (hypothesis) checks of msign over random shapes, scales and
batch dims: scale invariance (eps=0), transpose and batch equivariance, orthogonal
inputs as fixed points of the exact method, and never a non-finite output."""

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np

import matopt
from matopt.linalg import METHODS, PRESETS

# Compiled once per drawn shape: called op by op, msign compiles each of its
# primitives for each new shape (this file: 35 s of CPU op by op, 23 s jitted).
msign = jax.jit(matopt.msign, static_argnames=("coeffs", "method", "eps"))

SHAPES = dict(batch=st.integers(0, 2), m=st.integers(1, 10), n=st.integers(1, 10), seed=st.integers(0, 2**16))


def _x(batch, m, n, seed, scale=1.0):
  return jnp.asarray(np.random.default_rng(seed).standard_normal((2,) * batch + (m, n)) * scale, jnp.float32)


@hypothesis.settings(deadline=None, max_examples=20)
@hypothesis.given(log_scale=st.floats(-25, 25), coeffs=st.sampled_from(list(PRESETS)), **SHAPES)
def test_scale_invariant_and_finite(batch, m, n, seed, log_scale, coeffs):
  # Exactly scale invariant with eps=0. The default ε = 1e-7 is added to
  # ‖X‖_F as in Jordan's code, so it is not (test_newton_schulz.py checks
  # it against his formula and for finiteness at 1e-30…1e30).
  x = _x(batch, m, n, seed)
  base = msign(x, coeffs=coeffs, eps=0.0)
  scaled = msign(x * 10.0**log_scale, coeffs=coeffs, eps=0.0)
  assert np.all(np.isfinite(np.asarray(scaled)))
  np.testing.assert_allclose(scaled, base, atol=2e-4)


@hypothesis.settings(deadline=None, max_examples=20)
@hypothesis.given(method=st.sampled_from(METHODS), **SHAPES)
def test_transpose_and_batch_equivariant(batch, m, n, seed, method):
  x = _x(batch, m, n, seed)
  u = msign(x, method=method)
  np.testing.assert_allclose(msign(jnp.swapaxes(x, -1, -2), method=method), jnp.swapaxes(u, -1, -2), atol=2e-4)
  flat = x.reshape(-1, m, n)
  each = jnp.stack([msign(flat[i], method=method) for i in range(flat.shape[0])])
  np.testing.assert_allclose(u.reshape(-1, m, n), each, atol=2e-5)


@hypothesis.settings(deadline=None, max_examples=20)
@hypothesis.given(**SHAPES)
def test_exact_method_is_the_polar_factor(batch, m, n, seed):
  # msign(x) = U Vᵀ: semi-orthogonal, a fixed point, and ⟨x, msign(x)⟩ = ‖x‖_nuclear.
  x = _x(batch, m, n, seed)
  u = msign(x, method="svd")
  k = min(m, n)
  gram = u @ jnp.swapaxes(u, -1, -2) if m <= n else jnp.swapaxes(u, -1, -2) @ u
  np.testing.assert_allclose(gram, np.broadcast_to(np.eye(k), gram.shape), atol=1e-4)
  np.testing.assert_allclose(msign(u, method="svd"), u, atol=1e-4)
  nuclear = np.linalg.svd(np.asarray(x, np.float64), compute_uv=False).sum(-1)
  np.testing.assert_allclose(jnp.sum(x * u, axis=(-2, -1)), nuclear, rtol=1e-4)


@hypothesis.settings(deadline=None, max_examples=15)
@hypothesis.given(rank=st.integers(0, 3), **SHAPES)
def test_rank_deficient_inputs_stay_finite_and_bounded(batch, m, n, seed, rank):
  rng = np.random.default_rng(seed)
  a = rng.standard_normal((2,) * batch + (m, rank))
  b = rng.standard_normal((2,) * batch + (rank, n))
  x = jnp.asarray(a @ b, jnp.float32)
  for method in METHODS:
    u = np.asarray(msign(x, method=method))
    assert np.all(np.isfinite(u))
    # Jordan's quintic ends in a band below 1.3; the exact method at 1.
    assert np.all(np.linalg.svd(u, compute_uv=False) <= 1.3)
