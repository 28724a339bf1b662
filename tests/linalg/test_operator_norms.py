"""LMOs, norms and dual norms against a numpy transcription of Scion's table.

The reference below is written in the paper's PyTorch layout A ∈ R^{d_out×d_in}
(Pethick et al. 2025, Table 2) and applied to A = Wᵀ, so it also checks the
transcription to matopt's Flax layout W ∈ R^{d_in×d_out}.
"""

import hypothesis
import hypothesis.strategies as st
import jax.numpy as jnp
import numpy as np
import pytest

import matopt
from matopt.linalg import NORMS
from tests.helpers import matrix_with_condition, polar_factor

# Scion's Table 2 in the paper's layout A = (d_out, d_in): norm -> (LMO with
# the ascent sign, norm). Every registered norm needs an entry (checked below).
PAPER = {
  # col_j(A) ↦ √d_out col_j / ‖col_j‖
  "colnorm": (
    lambda a: np.sqrt(a.shape[0]) * a / np.linalg.norm(a, axis=0, keepdims=True),
    lambda a: np.max(np.linalg.norm(a, axis=0)) / np.sqrt(a.shape[0]),
  ),
  # row_i(A) ↦ row_i / (√d_in ‖row_i‖)
  "rownorm": (
    lambda a: a / (np.sqrt(a.shape[1]) * np.linalg.norm(a, axis=1, keepdims=True)),
    lambda a: np.max(np.sqrt(a.shape[1]) * np.linalg.norm(a, axis=1)),
  ),
  # A ↦ √(d_out/d_in) U Vᵀ
  "spectral": (
    lambda a: np.sqrt(a.shape[0] / a.shape[1]) * polar_factor(a),
    lambda a: np.sqrt(a.shape[1] / a.shape[0]) * np.linalg.norm(a, 2),
  ),
  "sign": (np.sign, lambda a: np.max(np.abs(a))),
  "frobenius": (lambda a: a / np.linalg.norm(a), np.linalg.norm),
}


def paper_lmo(a: np.ndarray, norm: str) -> np.ndarray:
  """Scion's LMO column of Table 2 (ascent sign), A = (d_out, d_in)."""
  return PAPER[norm][0](a)


def paper_norm(a: np.ndarray, norm: str) -> float:
  """Scion's norm row of Table 2, A = (d_out, d_in)."""
  return PAPER[norm][1](a)


# Per-norm needs of the exact checks: options that make the LMO exact (the
# spectral one is Newton–Schulz unless told otherwise) and scale invariant
# (msign adds ε = 1e-7 to ‖G‖_F, as the references do).
EXACT = {"spectral": {"method": "svd"}}
SCALE_INVARIANT = {"spectral": {"eps": 0.0}}


def _opts(norm):
  return EXACT.get(norm, {})


def test_every_norm_has_a_paper_reference():
  assert set(NORMS) == set(PAPER)


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("shape", [(12, 12), (7, 19), (19, 7)])
def test_lmo_and_norm_match_paper_table(norm, shape):
  w = np.random.default_rng(0).standard_normal(shape)
  ours = np.asarray(matopt.lmo(jnp.asarray(w, jnp.float32), norm, **_opts(norm)))
  np.testing.assert_allclose(ours, paper_lmo(w.T, norm).T, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(matopt.norm(jnp.asarray(w, jnp.float32), norm), paper_norm(w.T, norm), rtol=1e-4)


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("shape", [(3, 16, 16), (2, 9, 30), (30, 9), (1, 5), (5, 1)])
def test_identities(norm, shape):
  g = jnp.asarray(np.random.default_rng(1).standard_normal(shape), jnp.float32)
  d = matopt.lmo(g, norm, **_opts(norm))
  assert d.shape == g.shape and d.dtype == g.dtype
  np.testing.assert_allclose(jnp.sum(g * d, axis=(-2, -1)), matopt.dual_norm(g, norm), rtol=1e-4)
  np.testing.assert_allclose(matopt.norm(d, norm), 1.0, rtol=1e-4)


@pytest.mark.parametrize("norm", NORMS)
def test_holder_inequality(norm):
  # |⟨X, G⟩| ≤ ‖X‖ · ‖G‖_* for random X: dual_norm really is the dual of norm.
  rng = np.random.default_rng(2)
  g = jnp.asarray(rng.standard_normal((10, 14)), jnp.float32)
  for _ in range(20):
    x = jnp.asarray(rng.standard_normal((10, 14)), jnp.float32)
    assert abs(float(jnp.sum(x * g))) <= float(matopt.norm(x, norm) * matopt.dual_norm(g, norm)) * (1 + 1e-5)


def test_spectral_newton_schulz_close_to_exact():
  g = jnp.asarray(matrix_with_condition(16, 40, 10.0, seed=3), jnp.float32)
  ns = matopt.lmo(g, "spectral", coeffs="polar_express")
  np.testing.assert_allclose(ns, matopt.lmo(g, "spectral", method="svd"), atol=2e-3)
  np.testing.assert_allclose(matopt.norm(ns, "spectral"), 1.0, atol=2e-3)


def test_normalized_sign_divides_by_fan_in():
  g = jnp.asarray(np.random.default_rng(4).standard_normal((6, 4)), jnp.float32)
  d = matopt.lmo(g, "sign", normalized=True)
  np.testing.assert_allclose(d, np.sign(g) / 6)
  np.testing.assert_allclose(matopt.norm(d, "sign", normalized=True), 1.0)
  np.testing.assert_allclose(jnp.sum(g * d), matopt.dual_norm(g, "sign", normalized=True), rtol=1e-6)


@pytest.mark.parametrize("norm", NORMS)
def test_zero_rows_columns_and_matrices(norm):
  g = np.random.default_rng(5).standard_normal((6, 8))
  g[2, :] = 0.0
  g[:, 3] = 0.0
  for x in (g, np.zeros((6, 8))):
    d = np.asarray(matopt.lmo(jnp.asarray(x, jnp.float32), norm, **_opts(norm)))
    assert np.all(np.isfinite(d))
    np.testing.assert_allclose(d[2, :], 0.0, atol=1e-6)
    np.testing.assert_allclose(d[:, 3], 0.0, atol=1e-6)
    assert np.isfinite(float(matopt.norm(jnp.asarray(x, jnp.float32), norm)))
    assert np.isfinite(float(matopt.dual_norm(jnp.asarray(x, jnp.float32), norm)))


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("scale", [1e-30, 1e30])
def test_extreme_scales_give_same_direction(norm, scale):
  # The spectral LMO's msign adds ε = 1e-7 to ‖G‖_F, as the references do
  # (at 1e-30 its result is ~1e-22): eps=0 makes it exactly scale invariant.
  g = np.random.default_rng(6).standard_normal((6, 8))
  options = SCALE_INVARIANT.get(norm, {})
  ref = matopt.lmo(jnp.asarray(g, jnp.float32), norm, **options)
  out = matopt.lmo(jnp.asarray(g * scale, jnp.float32), norm, **options)
  assert np.all(np.isfinite(np.asarray(out)))
  np.testing.assert_allclose(out, ref, atol=1e-4)


@pytest.mark.parametrize("norm", NORMS)
def test_bf16_keeps_dtype(norm):
  g = jnp.asarray(np.random.default_rng(7).standard_normal((8, 12)), jnp.bfloat16)
  d = matopt.lmo(g, norm)
  assert d.dtype == jnp.bfloat16
  ref = matopt.lmo(g.astype(jnp.float32), norm)
  np.testing.assert_allclose(d.astype(jnp.float32), ref, atol=0.05 * float(jnp.max(jnp.abs(ref))))


@hypothesis.settings(deadline=None, max_examples=15)
@hypothesis.given(
  # Newton–Schulz LMOs are approximate; their identities are checked above with EXACT options.
  norm=st.sampled_from([n for n in NORMS if n not in EXACT]),
  batch=st.integers(0, 2),
  m=st.integers(1, 9),
  n=st.integers(1, 9),
  log_scale=st.floats(-25, 25),
  seed=st.integers(0, 2**16),
)
def test_identities_property(norm, batch, m, n, log_scale, seed):
  shape = (2,) * batch + (m, n)
  g = np.random.default_rng(seed).standard_normal(shape) * 10.0**log_scale
  g = jnp.asarray(g, jnp.float32)
  d = matopt.lmo(g, norm)
  assert np.all(np.isfinite(np.asarray(d)))
  np.testing.assert_allclose(matopt.norm(d, norm), 1.0, rtol=1e-4)
  ratio = jnp.sum((g / 10.0**log_scale) * d, axis=(-2, -1)) / (matopt.dual_norm(g, norm) / 10.0**log_scale)
  np.testing.assert_allclose(ratio, 1.0, rtol=1e-4)


def test_unknown_norm_and_option_raise():
  g = jnp.ones((3, 3))
  with pytest.raises(ValueError, match=r"Unknown norm 'nuclear'; valid norms are \('spectral'"):
    matopt.lmo(g, "nuclear")
  with pytest.raises(ValueError, match="Unknown norm"):
    matopt.norm(g, "l1")
  with pytest.raises(ValueError, match="Unknown norm"):
    matopt.dual_norm(g, "l1")
  with pytest.raises(ValueError, match=r"takes options \(\).*\['steps'\]"):
    matopt.lmo(g, "colnorm", steps=3)
  with pytest.raises(ValueError, match="last two axes"):
    matopt.lmo(jnp.ones(3), "sign")
  with pytest.raises(ValueError, match=r"Unknown msign method 'eig'; valid methods are \('newton_schulz'"):
    matopt.lmo(g, "spectral", method="eig")
  with pytest.raises(ValueError, match="valid presets"):
    matopt.lmo(g, "spectral", coeffs="quintic")


def test_norms_ignore_options_only_the_lmo_takes():
  g = jnp.asarray(np.random.default_rng(8).standard_normal((5, 7)), jnp.float32)
  np.testing.assert_array_equal(matopt.norm(g, "spectral", coeffs="polar_express", steps=3), matopt.norm(g, "spectral"))
  np.testing.assert_array_equal(matopt.dual_norm(g, "colnorm", normalized=True), matopt.dual_norm(g, "colnorm"))
  np.testing.assert_allclose(matopt.dual_norm(g, "sign", normalized=True), matopt.dual_norm(g, "sign") / 5)
