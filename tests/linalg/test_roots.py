"""Inverse p-th roots: eigh and coupled Newton against a float64 numpy eigh."""

import jax.numpy as jnp
import numpy as np
import pytest

from matopt.linalg import roots


def _psd(n, kappa, seed=0):
  rng = np.random.default_rng(seed)
  q, _ = np.linalg.qr(rng.standard_normal((n, n)))
  return (q * np.geomspace(1.0, 1.0 / kappa, n)) @ q.T


def _reference(a, p, ridge):
  w, q = np.linalg.eigh(a)
  return (q * (np.maximum(w, 0) + ridge) ** (-1.0 / p)) @ q.T


@pytest.mark.parametrize("p", [2, 4, 8])
@pytest.mark.parametrize("kappa", [10.0, 1e4])
def test_eigh_matches_numpy(p, kappa):
  a = _psd(24, kappa, seed=p) * 1e3
  eps = 1e-6
  ref = _reference(a, p, eps * 1e3)
  got = np.asarray(roots.inverse_pth_root(jnp.asarray(a, jnp.float32), p, eps=eps), np.float64)
  assert np.linalg.norm(got - ref) / np.linalg.norm(ref) < 1e-4


@pytest.mark.parametrize("p", [2, 4])
@pytest.mark.parametrize("kappa", [10.0, 1e3])
def test_newton_matches_eigh(p, kappa):
  a = jnp.asarray(_psd(16, kappa, seed=1), jnp.float32)
  newton = roots.inverse_pth_root(a, p, eps=1e-7, method="newton")
  eigh = roots.inverse_pth_root(a, p, eps=1e-7, method="eigh")
  np.testing.assert_allclose(newton, eigh, rtol=2e-3, atol=2e-3 * float(jnp.max(jnp.abs(eigh))))
  assert float(roots.root_error(a, newton, p, eps=1e-7)) < 1e-2


def test_rank_deficient_and_zero_are_finite():
  rng = np.random.default_rng(2)
  g = rng.standard_normal((10, 2))
  for a in (g @ g.T, np.zeros((10, 10))):
    for method in roots.METHODS:
      r = np.asarray(roots.inverse_pth_root(jnp.asarray(a, jnp.float32), 4, method=method))
      assert np.all(np.isfinite(r))


def test_batched_and_scale_invariant_up_to_power():
  a = np.stack([_psd(8, 100.0, seed=s) for s in range(3)])
  r1 = roots.inverse_pth_root(jnp.asarray(a, jnp.float32), 4)
  r2 = roots.inverse_pth_root(jnp.asarray(a * 1e20, jnp.float32), 4)
  # (c A)^{-1/4} = c^{-1/4} A^{-1/4}: the relative ridge keeps this exact.
  np.testing.assert_allclose(np.asarray(r2) * 1e5, r1, rtol=1e-3)
  np.testing.assert_allclose(r1[1], roots.inverse_pth_root(jnp.asarray(a[1], jnp.float32), 4), rtol=1e-5)


def test_root_error_detects_a_wrong_root():
  a = jnp.asarray(_psd(8, 10.0), jnp.float32)
  good = roots.inverse_pth_root(a, 4)
  assert float(roots.root_error(a, good, 4)) < 1e-4
  assert float(roots.root_error(a, 2.0 * good, 4)) > 0.5


@pytest.mark.parametrize(
  "kwargs, match",
  [
    ({"p": 0}, "p must be a positive number"),
    ({"eps": -1.0}, "eps must be a non-negative"),
    ({"method": "schur"}, r"Unknown root method 'schur'; valid methods are \('eigh', 'newton'\)"),
    ({"p": 2.5, "method": "newton"}, "needs an integer p"),
  ],
)
def test_bad_options(kwargs, match):
  with pytest.raises(ValueError, match=match):
    roots.inverse_pth_root(jnp.eye(3), **kwargs)


def test_non_square_raises():
  with pytest.raises(ValueError, match=r"square matrices \(\.\.\., n, n\), got shape \(3, 4\)"):
    roots.inverse_pth_root(jnp.ones((3, 4)))
