"""scale_by_lmo with per-leaf norms."""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import matopt
from matopt.linalg import METHODS
from tests.helpers import matrix_with_condition


def _tree():
  rng = np.random.default_rng(0)
  return {
    "embed": jnp.asarray(rng.standard_normal((10, 6)), jnp.float32),
    "hidden": jnp.asarray(rng.standard_normal((6, 6)), jnp.float32),
    "head": jnp.asarray(rng.standard_normal((6, 10)), jnp.float32),
  }


def test_pytree_of_norms():
  tree = _tree()
  norms = {"embed": "colnorm", "hidden": "spectral", "head": "sign"}
  tx = matopt.scale_by_lmo(norms, coeffs="polar_express")
  out, _ = jax.jit(tx.update)(tree, tx.init(tree))
  for k, n in norms.items():
    kw = {"coeffs": "polar_express"} if n == "spectral" else {}
    np.testing.assert_allclose(out[k], matopt.lmo(tree[k], n, **kw), atol=1e-6)


def test_callable_norms_and_normalized_sign():
  tree = _tree()
  tx = matopt.scale_by_lmo(lambda p: {k: "sign" if k == "head" else "frobenius" for k in p}, normalized=True)
  out, _ = tx.update(tree, tx.init(tree))
  np.testing.assert_allclose(out["head"], np.sign(tree["head"]) / 6)
  np.testing.assert_allclose(out["hidden"], tree["hidden"] / np.linalg.norm(tree["hidden"]), rtol=1e-6)


def test_bias_as_row_is_rms_normalisation():
  b = jnp.asarray([3.0, -4.0, 0.0, 0.0], jnp.float32)
  tx = matopt.scale_by_lmo("colnorm", dimension_numbers=matopt.DimensionNumbers((), 0))
  out, _ = tx.update({"b": b}, tx.init({"b": b}))
  np.testing.assert_allclose(out["b"], np.sqrt(4) * np.asarray(b) / 5.0, rtol=1e-6)


def test_inside_multi_transform():
  tree = _tree()
  tx = optax.multi_transform(
    {"a": matopt.scale_by_lmo("rownorm"), "b": optax.identity()},
    {"embed": "b", "hidden": "a", "head": "a"},
  )
  out, _ = tx.update(tree, tx.init(tree))
  np.testing.assert_array_equal(out["embed"], tree["embed"])
  np.testing.assert_allclose(out["head"], matopt.lmo(tree["head"], "rownorm"), rtol=1e-6)


def test_errors():
  with pytest.raises(ValueError, match=r"Unknown norm 'l2'; valid norms are"):
    matopt.scale_by_lmo("l2")
  with pytest.raises(ValueError, match="Unknown norm"):
    matopt.scale_by_lmo({"w": "spectral", "b": "bogus"})
  with pytest.raises(ValueError, match="valid presets"):
    matopt.scale_by_lmo("spectral", coeffs="fast")
  with pytest.raises(ValueError, match=r"Unknown msign method 'qr'; valid methods are \('newton_schulz'"):
    matopt.scale_by_lmo("spectral", method="qr")
  with pytest.raises(ValueError, match="Unknown msign method"):  # checked whichever norms the leaves get
    matopt.scale_by_lmo("sign", method="qr")
  tx = matopt.scale_by_lmo(lambda p: {"w": "nuclear"})
  with pytest.raises(ValueError, match=r"leaf 'w' got norm 'nuclear'"):
    tx.init({"w": jnp.ones((2, 2))})
  with pytest.raises(ValueError, match=r"scale_by_lmo acts on matrices, but leaf 'v'"):
    matopt.scale_by_lmo("sign").init({"v": jnp.ones(3)})


@pytest.mark.parametrize("method", METHODS)
def test_spectral_method_choices_are_msigns(method):
  # A wide leaf (1:4) and a square one: "auto" runs the Gram iteration on the first only.
  tree = {
    "wide": jnp.asarray(matrix_with_condition(16, 64, 100.0, seed=1), jnp.float32),
    "square": jnp.asarray(matrix_with_condition(12, 12, 100.0, seed=2), jnp.float32),
  }
  tx = matopt.scale_by_lmo("spectral", method=method, coeffs="polar_express")
  out, _ = jax.jit(tx.update)(tree, tx.init(tree))
  for k, g in tree.items():
    want = matopt.lmo(g, "spectral", method=method, coeffs="polar_express")
    np.testing.assert_allclose(out[k], want, atol=1e-5)


def test_method_default_is_scale_by_msigns():
  # Both transforms default to "auto"; the pure functions (msign, lmo) to the plain iteration.
  default = lambda fn: inspect.signature(fn).parameters["method"].default
  assert default(matopt.scale_by_lmo) == default(matopt.scale_by_msign) == "auto"
  assert default(matopt.msign) == "newton_schulz"


@pytest.mark.parametrize("norm", list(matopt.linalg.NORMS))
def test_every_norm_gets_its_own_options(norm):
  # Each leaf's LMO receives the transform's options its norm declares, and no others.
  tree = _tree()
  given = {"coeffs": "polar_express", "steps": 6, "method": "gram", "normalized": True}
  tx = matopt.scale_by_lmo(norm, **given)
  out, _ = jax.jit(tx.update)(tree, tx.init(tree))
  taken = {k: v for k, v in given.items() if k in matopt.linalg.NORMS[norm].options}
  for k, g in tree.items():
    np.testing.assert_allclose(out[k], matopt.lmo(g, norm, **taken), atol=1e-5)
