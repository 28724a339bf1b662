"""The overflow-safe ℓ2 norms shared by msign, the LMOs and normalize/clip_by_norm."""

import jax.numpy as jnp
import numpy as np
import pytest

from matopt.linalg.safe_norms import safe_divide, safe_l2, scaled_l2


@pytest.mark.parametrize("axis", [None, -1, -2, (-2, -1), 0])
@pytest.mark.parametrize("scale", [1e-30, 1e-20, 1.0, 1e20, 1e30])
def test_exact_where_squares_would_overflow_or_underflow(axis, scale):
  x = np.random.default_rng(0).standard_normal((3, 4, 5))
  want = np.linalg.norm(x, axis=axis) if axis is not None else np.linalg.norm(x)
  got = safe_l2(jnp.asarray(x * scale, jnp.float32), axis)
  assert got.shape == np.shape(want)
  np.testing.assert_allclose(np.asarray(got, np.float64) / scale, want, rtol=2e-6)
  # A plain sum of squares in float32 fails at both ends.
  if scale in (1e-30, 1e30):
    plain = jnp.sqrt(jnp.sum(jnp.asarray(x * scale, jnp.float32) ** 2))
    assert not np.isclose(float(plain) / scale, np.linalg.norm(x), rtol=1e-3)


def test_keepdims_scaled_and_edge_cases():
  x = jnp.asarray(np.random.default_rng(1).standard_normal((2, 6, 7)), jnp.float32)
  assert safe_l2(x, (-2, -1), keepdims=True).shape == (2, 1, 1)
  y, norm, peak = scaled_l2(x, (-2, -1))
  np.testing.assert_allclose(y * peak, x, rtol=1e-6)
  np.testing.assert_allclose(jnp.max(jnp.abs(y), axis=(-2, -1)), 1.0)
  np.testing.assert_allclose((norm * peak)[:, 0, 0], np.linalg.norm(np.asarray(x), axis=(-2, -1)), rtol=1e-6)
  # Zero and empty arrays: norm 0, no NaN.
  assert float(safe_l2(jnp.zeros((3, 3)))) == 0.0
  assert float(safe_l2(jnp.zeros((0,)))) == 0.0
  np.testing.assert_array_equal(safe_l2(jnp.zeros((2, 3)), -1), [0.0, 0.0])


def test_safe_divide_maps_zero_divisors_to_zero():
  x = jnp.asarray([[1.0, 2.0], [3.0, 4.0]])
  d = jnp.asarray([[2.0], [0.0]])
  np.testing.assert_array_equal(safe_divide(x, d), [[0.5, 1.0], [0.0, 0.0]])
