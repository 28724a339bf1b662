"""msign against the exact polar factor, optax.contrib, and edge cases."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from optax.contrib import _muon as optax_muon

import matopt
from matopt.linalg import METHODS, PRESETS, coefficients, newton_schulz
from tests.helpers import matrix_with_condition, polar_factor

SHAPES = [(64, 64), (48, 128), (128, 48), (1, 16), (16, 1)]


def _rel_err(a, b):
  return float(np.linalg.norm(np.asarray(a, np.float64) - b) / np.linalg.norm(b))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kappa", [10.0, 100.0])
def test_polar_express_matches_svd(shape, kappa):
  x = matrix_with_condition(*shape, kappa, seed=1)
  out = matopt.msign(jnp.asarray(x, jnp.float32), coeffs="polar_express")
  assert out.shape == shape and out.dtype == jnp.float32
  assert _rel_err(out, polar_factor(x)) < 5e-3


@pytest.mark.parametrize("shape", SHAPES)
def test_svd_method_is_exact(shape):
  x = matrix_with_condition(*shape, 1e3, seed=2)
  out = matopt.msign(jnp.asarray(x, jnp.float32), method="svd")
  assert _rel_err(out, polar_factor(x)) < 1e-4


@pytest.mark.parametrize("shape", [(64, 64), (48, 128), (128, 48)])
@pytest.mark.parametrize("coeffs", list(PRESETS))
def test_presets_keep_singular_vectors_and_band(shape, coeffs):
  # Every preset: at κ = 10 in at most Jordan's band (a new one must do as well).
  x = matrix_with_condition(*shape, 10.0, seed=3)
  out = np.asarray(matopt.msign(jnp.asarray(x, jnp.float32), coeffs=coeffs), np.float64)
  u, _, vh = np.linalg.svd(x, full_matrices=False)
  # Newton–Schulz maps each singular value by a scalar polynomial: in x's
  # singular basis the output is diagonal, with entries in the documented band.
  core = u.T @ out @ vh.T
  diag = np.diag(core)
  assert np.linalg.norm(core - np.diag(diag)) < 1e-4 * np.linalg.norm(core)
  assert 0.6 < diag.min() and diag.max() < 1.2


def test_documented_bands_hold():
  # The table in msign's docstring (256×1024, float32).
  x10 = jnp.asarray(matrix_with_condition(256, 1024, 10.0, seed=0), jnp.float32)
  x1000 = jnp.asarray(matrix_with_condition(256, 1024, 1000.0, seed=0), jnp.float32)
  band = lambda y: np.linalg.svd(np.asarray(y, np.float64), compute_uv=False)[[-1, 0]]
  lo, hi = band(matopt.msign(x10, coeffs="jordan"))
  assert 0.66 < lo < 0.70 and 1.12 < hi < 1.15
  lo, hi = band(matopt.msign(x1000, coeffs="jordan"))
  assert 0.10 < lo < 0.12 and 1.19 < hi < 1.21
  lo, hi = band(matopt.msign(x10, coeffs="polar_express"))
  assert 0.99999 < lo and hi < 1.00001
  lo, hi = band(matopt.msign(x1000, coeffs="polar_express"))
  assert 0.92 < lo < 0.94 and hi < 1.00001
  lo, hi = band(matopt.msign(x10, coeffs="cubic"))
  assert 0.96 < lo < 0.98 and hi < 1.00001
  lo, hi = band(matopt.msign(x1000, coeffs="cubic"))
  assert 0.02 < lo < 0.04 and hi < 1.00001


def test_cubic_converges_with_more_steps():
  x = matrix_with_condition(32, 64, 1000.0, seed=4)
  err = [
    _rel_err(matopt.msign(jnp.asarray(x, jnp.float32), coeffs="cubic", steps=s), polar_factor(x)) for s in (4, 12, 40)
  ]
  assert err[0] > err[1] > err[2] and err[2] < 1e-4


@pytest.mark.parametrize("shape", [(32, 32), (24, 64), (64, 24)])
def test_parity_with_optax_contrib(shape):
  x = jnp.asarray(matrix_with_condition(*shape, 30.0, seed=5), jnp.float32)
  abc = jnp.asarray([[3.4445, -4.7750, 2.0315]] * 5)
  theirs = optax_muon.orthogonalize_via_newton_schulz(x, abc, ns_steps=5)
  ours = matopt.msign(x, coeffs=abc)
  np.testing.assert_allclose(ours, theirs, atol=2e-5, rtol=1e-4)
  np.testing.assert_allclose(matopt.msign(x), ours, atol=1e-6)


def test_explicit_schedule_equals_preset_and_steps_extend():
  x = jnp.asarray(matrix_with_condition(16, 40, 50.0, seed=6), jnp.float32)
  sched = coefficients.resolve_schedule("polar_express")
  explicit = matopt.msign(x / 1.01, coeffs=sched.coeffs)  # preset also scales ‖x‖ by 1.01
  np.testing.assert_allclose(matopt.msign(x, coeffs="polar_express"), explicit, atol=1e-5)
  assert coefficients.resolve_schedule("polar_express", 10).coeffs.shape == (10, 3)
  np.testing.assert_array_equal(coefficients.resolve_schedule("polar_express", 10).coeffs[-1], [1.875, -1.25, 0.375])
  assert coefficients.resolve_schedule("jordan", 3).coeffs.shape == (3, 3)
  assert coefficients.resolve_schedule("jordan", np.int64(3)).coeffs.shape == (3, 3)


def test_polar_express_safety_factor_applied():
  rows = coefficients.resolve_schedule("polar_express").coeffs
  np.testing.assert_allclose(
    rows[0], [8.28721201814563 / 1.01, -23.595886519098837 / 1.01**3, 17.300387312530933 / 1.01**5]
  )
  np.testing.assert_array_equal(rows[7], [1.875, -1.25, 0.375])


def test_batched_leading_axes_equal_per_matrix():
  rng = np.random.default_rng(7)
  x = jnp.asarray(rng.standard_normal((2, 3, 12, 20)), jnp.float32)
  out = matopt.msign(x, coeffs="polar_express")
  for i in range(2):
    for j in range(3):
      np.testing.assert_allclose(out[i, j], matopt.msign(x[i, j], coeffs="polar_express"), atol=1e-5)


@pytest.mark.parametrize("shape", SHAPES + [(32, 128), (128, 32), (2, 24, 96)])
@pytest.mark.parametrize("kappa", [10.0, 1e3])
@pytest.mark.parametrize("coeffs", list(PRESETS))
def test_gram_iteration_as_accurate_as_plain(shape, kappa, coeffs):
  # The Gram form runs the same polynomials: its distance to UVᵀ is the
  # plain iteration's (its restarts keep float32 round-off from growing).
  *batch, m, n = shape
  x = np.stack([matrix_with_condition(m, n, kappa, seed=30 + i) for i in range(int(np.prod(batch)))])
  x = x.reshape(*batch, m, n) if batch else x[0]
  ref = polar_factor(x)
  plain = matopt.msign(jnp.asarray(x, jnp.float32), coeffs=coeffs)
  gram = matopt.msign(jnp.asarray(x, jnp.float32), coeffs=coeffs, method="gram")
  assert gram.shape == x.shape
  assert _rel_err(gram, ref) <= 1.5 * _rel_err(plain, ref) + 2e-6
  if coeffs == "polar_express" and kappa == 10.0:
    assert _rel_err(gram, ref) < 1e-4


@pytest.mark.parametrize("kappa", [1e2, 1e3])
def test_gram_without_restarts_strays_from_the_polynomial(kappa):
  # Jordan's schedule runs the Gram form without restarts: the same distance
  # to UVᵀ, but 5e-5…2e-4 from the float64 polynomial (plain: 1e-6…3e-6),
  # the numbers msign's docstring gives for method="gram".
  x = matrix_with_condition(64, 256, kappa, seed=2)
  exact = _quintic_float64(x, 1e-7)
  plain = matopt.msign(jnp.asarray(x, jnp.float32))
  gram = matopt.msign(jnp.asarray(x, jnp.float32), method="gram")
  assert _rel_err(plain, exact) < 1e-5
  assert 2e-5 < _rel_err(gram, exact) < 5e-4
  np.testing.assert_allclose(_rel_err(gram, polar_factor(x)), _rel_err(plain, polar_factor(x)), rtol=1e-3)


@pytest.mark.parametrize("method", METHODS)
def test_zero_is_zero(method):
  out = matopt.msign(jnp.zeros((5, 7)), method=method)
  assert np.array_equal(np.asarray(out), np.zeros((5, 7)))


def test_rank_deficient_and_zero_rows_stay_finite():
  rng = np.random.default_rng(8)
  a = rng.standard_normal((20, 3)) @ rng.standard_normal((3, 30))  # rank 3
  a[4] = 0.0
  for method in METHODS:
    out = np.asarray(matopt.msign(jnp.asarray(a, jnp.float32), method=method, coeffs="polar_express"))
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out[4], 0.0, atol=1e-6)
  svd_out = np.asarray(matopt.msign(jnp.asarray(a, jnp.float32), method="svd"), np.float64)
  s = np.linalg.svd(svd_out, compute_uv=False)
  np.testing.assert_allclose(s[:3], 1.0, atol=1e-5)
  np.testing.assert_allclose(s[3:], 0.0, atol=1e-5)


def _quintic_float64(x, eps, steps=5):
  """Jordan's iteration in float64 from X / (‖X‖_F + ε): msign's documented formula."""
  a, b, c = 3.4445, -4.7750, 2.0315
  x = np.asarray(x, np.float64)
  x = x / (np.linalg.norm(x) + eps)
  for _ in range(steps):
    gram = x @ x.T
    x = a * x + (b * gram + c * gram @ gram) @ x
  return x


@pytest.mark.parametrize("method", ["newton_schulz", "gram"])
@pytest.mark.parametrize("scale", [1e-30, 1e-12, 1.0, 1e12, 1e30])
def test_extreme_scales(scale, method):
  # eps=0: exactly scale invariant from 1e-30 to 1e30 (no overflow or
  # underflow: the norm is taken after dividing by max|X|).
  x = matrix_with_condition(24, 40, 10.0, seed=9)
  ref = np.asarray(matopt.msign(jnp.asarray(x, jnp.float32), eps=0.0))
  out = np.asarray(matopt.msign(jnp.asarray(x * scale, jnp.float32), method=method, eps=0.0))
  assert np.all(np.isfinite(out))
  np.testing.assert_allclose(out, ref, atol=1e-4)


@pytest.mark.parametrize("method", ["newton_schulz", "gram"])
@pytest.mark.parametrize("scale", [1e-30, 1e-12, 1e-7, 1e-4, 1.0, 1e30])
def test_default_eps_is_the_references(scale, method):
  # The default ε = 1e-7 is added to ‖X‖_F, as Jordan's X / (‖X‖_F + 1e-7):
  # it shrinks the start where ‖X‖_F is near ε or below, and the result
  # with it (≈ 3.4445⁵ · X/ε at 1e-30), finite at every scale.
  x = matrix_with_condition(24, 40, 10.0, seed=9) * scale
  want = _quintic_float64(x, 1e-7)
  out = np.asarray(matopt.msign(jnp.asarray(x, jnp.float32), method=method), np.float64)
  assert np.all(np.isfinite(out))
  np.testing.assert_allclose(out, want, rtol=0, atol=2e-5 * np.max(np.abs(want)))


@pytest.mark.parametrize(
  ("method", "dtype"), [("newton_schulz", "float32"), ("gram", "bfloat16"), ("newton_schulz", "bfloat16")]
)
def test_edge_inputs_stay_finite_with_and_without_eps(method, dtype):
  # Zero, rank-1, rank-2 and 1×n inputs at 1e-30, 1 and 1e30 (one batch per
  # shape), with ε = 0 and the default, iterating in the input's dtype:
  # never a NaN, and 0 ↦ 0.
  rng = np.random.default_rng(13)
  kinds = [
    np.zeros((6, 8)),
    np.outer(rng.standard_normal(6), rng.standard_normal(8)),
    rng.standard_normal((6, 2)) @ rng.standard_normal((2, 8)),
  ]
  scales = (1e-30, 1.0, 1e30)
  msign = jax.jit(matopt.msign, static_argnames=("method", "eps", "compute_dtype"))
  square = np.stack([k * s for k in kinds for s in scales])
  row = np.stack([rng.standard_normal((1, 9)) * s for s in scales])
  for x in (square, row):
    for eps in (0.0, 1e-7):
      out = np.asarray(msign(jnp.asarray(x, dtype), method=method, eps=eps, compute_dtype=dtype), np.float32)
      assert np.all(np.isfinite(out)), (x.shape, eps)
      assert x is row or np.array_equal(out[: len(scales)], np.zeros_like(out[: len(scales)]))


def test_vector_shaped_matrices():
  v = np.random.default_rng(10).standard_normal((1, 9))
  out = matopt.msign(jnp.asarray(v, jnp.float32), coeffs="polar_express")
  np.testing.assert_allclose(out, v / np.linalg.norm(v), atol=1e-3)
  np.testing.assert_allclose(
    matopt.msign(jnp.asarray(v.T, jnp.float32), method="svd"), (v / np.linalg.norm(v)).T, atol=1e-6
  )


def test_bf16_keeps_dtype_and_accuracy():
  x = matrix_with_condition(32, 48, 10.0, seed=11)
  out = matopt.msign(jnp.asarray(x, jnp.bfloat16), coeffs="polar_express")
  assert out.dtype == jnp.bfloat16
  assert _rel_err(out.astype(jnp.float32), polar_factor(x)) < 2e-2
  low = matopt.msign(jnp.asarray(x, jnp.bfloat16), coeffs="polar_express", compute_dtype=jnp.bfloat16)
  assert low.dtype == jnp.bfloat16 and np.all(np.isfinite(np.asarray(low, np.float32)))
  gram = matopt.msign(jnp.asarray(x, jnp.bfloat16), coeffs="polar_express", method="gram")
  assert gram.dtype == jnp.bfloat16
  assert _rel_err(gram.astype(jnp.float32), polar_factor(x)) < 2e-2


def test_jit_matches_eager():
  x = jnp.asarray(matrix_with_condition(8, 12, 5.0, seed=12), jnp.float32)
  np.testing.assert_allclose(jax.jit(matopt.msign)(x), matopt.msign(x), atol=1e-5)


@pytest.mark.parametrize(
  "kwargs, match",
  [
    ({"coeffs": "quintic"}, "coeffs: unknown Newton–Schulz coefficient preset 'quintic'"),
    ({"coeffs": np.ones((4, 2))}, r"shape \(k, 3\)"),
    ({"coeffs": [[1.0, np.nan, 0.0]]}, "finite"),
    ({"coeffs": [[-1.0, 0.0, 0.0]]}, "a > 0"),
    ({"coeffs": [["a", "b", "c"]]}, "coeffs must be one of"),
    ({"coeffs": 3}, r"coeffs: .*shape \(k, 3\)"),
    ({"eps": float("nan")}, r"eps must lie in \[0.0, inf\]"),
    ({"eps": -1e-7}, "eps must lie in"),
    ({"steps": 0}, "steps must be >= 1"),
    ({"steps": 2.5}, "positive int"),
    ({"steps": True}, "positive int"),
    ({"method": "eig"}, "Unknown msign method 'eig'"),
    ({"method": None}, "Unknown msign method None"),
  ],
)
def test_bad_options_raise(kwargs, match):
  with pytest.raises(ValueError, match=match):
    matopt.msign(jnp.ones((3, 4)), **kwargs)


def test_vector_input_raises():
  with pytest.raises(ValueError, match=r"at least 2 axes.*\(5,\)"):
    matopt.msign(jnp.ones(5))


def test_gram_restarts_only_for_tightly_converging_schedules():
  # Jordan's band (±0.3) and the cubic's (±0.1) dwarf float32 round-off;
  # Polar Express converges to 1 and restarts every 2 steps.
  assert newton_schulz._gram_restart_every(coefficients.resolve_schedule("jordan")) == 5
  assert newton_schulz._gram_restart_every(coefficients.resolve_schedule("cubic")) == 12
  assert newton_schulz._gram_restart_every(coefficients.resolve_schedule("polar_express")) == 2


def test_gram_flop_ratio_counts_the_products():
  # Square: each plain step is 6m³ (XXᵀ, A², BX), Gram without restarts
  # 4m³ at the ends plus 8m³ per inner step: (4 + 8·4 + 4) / 30.
  assert newton_schulz.gram_flop_ratio(64, 64, 5, 5) == pytest.approx(40 / 30)
  # 1:4, Jordan's 5 steps: (16 + 32 + 4) / (5 · 18).
  assert newton_schulz.gram_flop_ratio(64, 256, 5, 5) == pytest.approx(52 / 90)
  # Restarts add an XXᵀ and a PX per segment: segments of 2, 2, 1 steps.
  assert newton_schulz.gram_flop_ratio(64, 256, 5, 2) == pytest.approx((28 + 28 + 20) / 90)


@pytest.mark.parametrize(
  "shape, expect", [((64, 64), "newton_schulz"), ((48, 192), "gram"), ((192, 48), "gram"), ((64, 96), "newton_schulz")]
)
def test_auto_method_takes_gram_where_it_saves_flops(shape, expect):
  x = jnp.asarray(matrix_with_condition(*shape, 100.0, seed=5), jnp.float32)
  auto = matopt.msign(x, method="auto")
  np.testing.assert_array_equal(auto, matopt.msign(x, method=expect))
  ref = polar_factor(np.asarray(x))
  assert _rel_err(auto, ref) <= 1.5 * _rel_err(matopt.msign(x), ref) + 2e-6
