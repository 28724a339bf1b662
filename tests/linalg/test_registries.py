"""The norm and Newton–Schulz preset registries: one record is all a new one needs.

A toy norm and a toy preset are registered for one test each and removed
after it; every entry point (lmo, norm, dual_norm, scale_by_lmo, msign,
resolve_schedule, scale_by_msign, the option checks and their messages) must
pick them up with no other edit.
"""

import jax.numpy as jnp
import numpy as np
import pytest

import matopt
from matopt.linalg import (
  METHODS,
  NORMS,
  PRESETS,
  NormInfo,
  Preset,
  coefficients,
  operator_norms,
)
from tests.helpers import matrix_with_condition, polar_factor


def _toy_lmo(g, normalized=False):
  # ‖W‖ = c‖W‖_F with c = 2 (normalized) or 1: lmo = G / (c‖G‖_F), dual = ‖G‖_F / c.
  c = 2.0 if normalized else 1.0
  x = g.astype(jnp.float32)
  return x / (c * jnp.sqrt(jnp.sum(x * x, axis=(-2, -1), keepdims=True)))


def _toy_norm(x, normalized=False):
  return (2.0 if normalized else 1.0) * jnp.sqrt(jnp.sum(x * x, axis=(-2, -1)))


def _toy_dual(g, normalized=False):
  return jnp.sqrt(jnp.sum(g * g, axis=(-2, -1))) / (2.0 if normalized else 1.0)


@pytest.fixture
def toy_norm():
  info = matopt.linalg.register_norm(
    NormInfo(
      "toy_frobenius",
      _toy_lmo,
      _toy_norm,
      _toy_dual,
      options=("normalized",),
      description="c‖W‖_F, a test double.",
      reference="tests/linalg/test_registries.py",
    )
  )
  try:
    yield info
  finally:
    operator_norms.unregister_norm(info.name)


@pytest.fixture
def toy_preset():
  # Two rows and a safety factor, so that truncation, repetition and the
  # safety division are all exercised.
  preset = matopt.linalg.register_preset(
    Preset("toy", rows=((2.0, -1.5, 0.5), (1.5, -0.5, 0.0)), steps=14, safety=1.05, source="a test double")
  )
  try:
    yield preset
  finally:
    coefficients.unregister_preset(preset.name)


def test_registered_norm_reaches_every_entry_point(toy_norm):
  name = toy_norm.name
  assert name in NORMS and NORMS[name] is toy_norm
  g = jnp.asarray(np.random.default_rng(0).standard_normal((3, 6, 8)), jnp.float32)
  for normalized in (False, True):
    d = matopt.lmo(g, name, normalized=normalized)
    np.testing.assert_allclose(
      jnp.sum(g * d, axis=(-2, -1)), matopt.dual_norm(g, name, normalized=normalized), rtol=1e-5
    )
    np.testing.assert_allclose(matopt.norm(d, name, normalized=normalized), 1.0, rtol=1e-5)
  # scale_by_lmo routes the options the record declares (here normalized) and no others.
  tree = {"w1": g[0], "w2": g[1]}
  tx = matopt.scale_by_lmo({"w1": name, "w2": "sign"}, normalized=True, coeffs="polar_express")
  out, _ = tx.update(tree, tx.init(tree))
  np.testing.assert_allclose(out["w1"], matopt.lmo(g[0], name, normalized=True), rtol=1e-6)
  np.testing.assert_allclose(out["w2"], np.sign(g[1]) / 6)
  with pytest.raises(ValueError, match=r"lmo\(norm='toy_frobenius'\) takes options \('normalized',\).*\['steps'\]"):
    matopt.lmo(g, name, steps=3)
  with pytest.raises(ValueError, match=r"valid norms are \('spectral', .*'toy_frobenius'\)"):
    matopt.lmo(g, "nuclear")


def test_removed_norm_is_unknown_again(toy_norm):
  operator_norms.unregister_norm(toy_norm.name)
  try:
    for fn in (matopt.lmo, matopt.norm, matopt.dual_norm):
      with pytest.raises(ValueError, match="Unknown norm 'toy_frobenius'"):
        fn(jnp.ones((2, 2)), toy_norm.name)
    with pytest.raises(ValueError, match="Unknown norm 'toy_frobenius'"):
      matopt.scale_by_lmo(toy_norm.name)
  finally:
    matopt.linalg.register_norm(toy_norm)  # the fixture removes it


def test_registered_preset_reaches_every_entry_point(toy_preset):
  name = toy_preset.name
  assert name in PRESETS and PRESETS[name] is toy_preset
  sched = matopt.linalg.resolve_schedule(name)
  assert sched.coeffs.shape == (14, 3) and sched.norm_scale == 1.05
  # Algorithm 1's safety: every row but the last divided by (s, s³, s⁵); the last repeats.
  np.testing.assert_allclose(sched.coeffs[0], [2.0 / 1.05, -1.5 / 1.05**3, 0.5 / 1.05**5])
  np.testing.assert_array_equal(sched.coeffs[1:], np.tile([1.5, -0.5, 0.0], (13, 1)))
  assert matopt.linalg.resolve_schedule(name, 3).coeffs.shape == (3, 3)

  x = jnp.asarray(matrix_with_condition(12, 30, 10.0, seed=1), jnp.float32)
  out = matopt.msign(x, coeffs=name)
  # The same numbers as the explicit schedule on the input divided by the safety factor.
  np.testing.assert_allclose(out, matopt.msign(x / 1.05, coeffs=sched.coeffs), atol=1e-5)
  assert np.linalg.norm(np.asarray(out) - polar_factor(np.asarray(x))) < 1e-3 * np.sqrt(12)
  for method in (m for m in METHODS if m != "svd"):  # every Newton–Schulz method runs the preset
    np.testing.assert_allclose(matopt.msign(x, coeffs=name, method=method), out, atol=1e-4)

  tree = {"w": x}
  for tx, want in (
    (matopt.scale_by_msign(coeffs=name), out),
    (matopt.scale_by_lmo("spectral", coeffs=name), matopt.lmo(x, "spectral", coeffs=name)),
  ):
    got, _ = tx.update(tree, tx.init(tree))
    np.testing.assert_allclose(got["w"], want, atol=1e-5)
  np.testing.assert_allclose(matopt.lmo(x, "spectral", coeffs=name), out * np.sqrt(30 / 12), atol=1e-5)
  with pytest.raises(ValueError, match=r"valid presets are \('jordan', .*'toy'\)"):
    matopt.msign(x, coeffs="quintic")


def test_removed_preset_is_unknown_again(toy_preset):
  coefficients.unregister_preset(toy_preset.name)
  try:
    with pytest.raises(ValueError, match="unknown Newton–Schulz coefficient preset 'toy'"):
      matopt.msign(jnp.ones((2, 3)), coeffs="toy")
    with pytest.raises(ValueError, match="unknown Newton–Schulz coefficient preset 'toy'"):
      matopt.scale_by_lmo("sign", coeffs="toy")  # checked for the spectral norm it may meet
  finally:
    matopt.linalg.register_preset(toy_preset)  # the fixture removes it


def test_duplicate_names_need_replace(toy_norm, toy_preset):
  with pytest.raises(ValueError, match="registered already; pass replace=True"):
    matopt.linalg.register_norm(toy_norm)
  with pytest.raises(ValueError, match="registered already; pass replace=True"):
    matopt.linalg.register_preset(toy_preset)
  assert matopt.linalg.register_preset(toy_preset, replace=True) is toy_preset
  with pytest.raises(ValueError, match="No norm named 'nuclear'"):
    operator_norms.unregister_norm("nuclear")
  with pytest.raises(ValueError, match="No Newton–Schulz preset named 'quintic'"):
    coefficients.unregister_preset("quintic")


@pytest.mark.parametrize(
  "kwargs, match",
  [
    ({"rows": ((1.0, 0.0),)}, r"shape \(k, 3\)"),
    ({"rows": ((-1.0, 0.0, 0.0),)}, "a > 0"),
    ({"rows": ((np.inf, 0.0, 0.0),)}, "finite"),
    ({"steps": 0}, "steps must be >= 1"),
    ({"steps": True}, "steps must be a positive int"),
    ({"safety": 0.99}, r"safety must lie in \[1.0, inf\)"),
    ({"name": ""}, "non-empty string"),
  ],
)
def test_bad_preset_records_raise(kwargs, match):
  fields = {"name": "bad", "rows": ((1.5, -0.5, 0.0),), "steps": 3} | kwargs
  with pytest.raises(ValueError, match=match):
    Preset(**fields)


def test_bad_norm_records_raise():
  with pytest.raises(TypeError, match="lmo must be callable"):
    NormInfo("bad", None, _toy_norm, _toy_dual)
  with pytest.raises(TypeError, match="takes a NormInfo record"):
    matopt.linalg.register_norm("frobenius")
  with pytest.raises(TypeError, match="takes a Preset record"):
    matopt.linalg.register_preset(((1.5, -0.5, 0.0),))


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_record(name):
  preset = PRESETS[name]
  assert preset.source, f"{name}: cite where the coefficients come from"
  sched = matopt.linalg.resolve_schedule(name)
  assert sched.coeffs.shape == (preset.steps, 3) and sched.norm_scale == preset.safety
  longer = matopt.linalg.resolve_schedule(name, len(preset.rows) + 3).coeffs
  np.testing.assert_array_equal(longer[-4:], np.tile(preset.rows[-1], (4, 1)))


@pytest.mark.parametrize("name", list(NORMS))
def test_every_norm_record(name):
  info = NORMS[name]
  assert info.name == name and info.description and info.reference
