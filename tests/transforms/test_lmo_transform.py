"""scale_by_lmo with per-leaf norms."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import matopt


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
  tx = matopt.scale_by_lmo(lambda p: {k: "sign" if k == "head" else "frobenius" for k in p},
                           normalized=True)
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
  tx = matopt.scale_by_lmo(lambda p: {"w": "nuclear"})
  with pytest.raises(ValueError, match=r"leaf 'w' got norm 'nuclear'"):
    tx.init({"w": jnp.ones((2, 2))})
  with pytest.raises(ValueError, match=r"scale_by_lmo acts on matrices, but leaf 'v'"):
    matopt.scale_by_lmo("sign").init({"v": jnp.ones(3)})
