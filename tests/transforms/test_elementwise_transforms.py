"""scale_by_sign, scale_by_shape, normalize_by_norm, clip_by_norm, partition."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import matopt


def _tree(scale=1.0):
  rng = np.random.default_rng(0)
  return {
    "w": jnp.asarray(rng.standard_normal((4, 16)) * scale, jnp.float32),
    "b": jnp.asarray(rng.standard_normal(16) * scale, jnp.float32),
  }


def test_scale_by_sign():
  tree = {"w": jnp.asarray([[1.5, -2.0], [0.0, 3.0]], jnp.float32), "s": jnp.asarray(-0.1, jnp.float32)}
  tx = matopt.scale_by_sign()
  out, _ = tx.update(tree, tx.init(tree))
  np.testing.assert_array_equal(out["w"], [[1.0, -1.0], [0.0, 1.0]])
  assert float(out["s"]) == -1.0


@pytest.mark.parametrize("scale, expected", [("shape", 2.0), ("rms", 0.2 * 4.0), ("none", 1.0)])
def test_scale_by_shape(scale, expected):
  tree = {"w": jnp.ones((4, 16), jnp.float32)}  # fan_in 4, fan_out 16
  tx = matopt.scale_by_shape(scale)
  out, _ = tx.update(tree, tx.init(tree))
  np.testing.assert_allclose(out["w"], expected, rtol=1e-6)
  tall = {"w": jnp.ones((16, 4), jnp.float32)}
  out, _ = tx.update(tall, tx.init(tall))
  np.testing.assert_allclose(out["w"], {"shape": 1.0, "rms": 0.8, "none": 1.0}[scale], rtol=1e-6)


def test_scale_by_shape_errors():
  with pytest.raises(ValueError, match=r"Unknown update scale 'muP'; valid scales are"):
    matopt.scale_by_shape("muP")
  with pytest.raises(ValueError, match=r"rms must lie in \(0.0, inf\]"):
    matopt.scale_by_shape("rms", rms=-1.0)


@pytest.mark.parametrize("scale", [1e-30, 1.0, 1e30])
def test_normalize_global_and_leaf(scale):
  tree = _tree(scale)
  g = matopt.normalize_by_norm()
  out, _ = g.update(tree, g.init(tree))
  total = np.sqrt(sum(np.sum((np.asarray(x, np.float64) / scale) ** 2) for x in jax.tree.leaves(out)))
  np.testing.assert_allclose(total * scale, 1.0, rtol=1e-5)
  leaf = matopt.normalize_by_norm(scope="leaf")
  out, _ = leaf.update(tree, leaf.init(tree))
  for x in jax.tree.leaves(out):
    np.testing.assert_allclose(np.linalg.norm(np.asarray(x, np.float64)), 1.0, rtol=1e-5)


def test_normalize_zero_is_zero():
  tree = jax.tree.map(jnp.zeros_like, _tree())
  out, _ = matopt.normalize_by_norm().update(tree, optax.EmptyState())
  for x in jax.tree.leaves(out):
    np.testing.assert_array_equal(x, 0.0)


def test_clip_by_norm_matches_formula():
  tree = _tree()
  norm = float(optax.tree.norm(tree))
  for lam in (0.5 * norm, 2.0 * norm):
    out, _ = matopt.clip_by_norm(lam).update(tree, optax.EmptyState())
    factor = min(1.0, lam / norm)
    for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(tree)):
      np.testing.assert_allclose(a, factor * np.asarray(b), rtol=1e-5)
  big = _tree(1e30)
  out, _ = matopt.clip_by_norm(1.0).update(big, optax.EmptyState())
  np.testing.assert_allclose(float(optax.tree.norm(out)), 1.0, rtol=1e-4)


def test_norm_scaling_errors():
  with pytest.raises(ValueError, match=r"Unknown scope 'layer'; valid scopes are \('global', 'leaf'\)"):
    matopt.normalize_by_norm(scope="layer")
  with pytest.raises(ValueError, match=r"max_norm must lie in \(0.0, inf\]"):
    matopt.clip_by_norm(0.0)


def test_partition_checks_labels():
  tree = {"Dense_0": {"kernel": jnp.ones((3, 3)), "bias": jnp.ones(3)}}
  tx = matopt.partition({"hidden": optax.sgd(0.1)}, matopt.labels.by_role)
  with pytest.raises(ValueError, match=r"Leaf 'Dense_0/bias' has label 'vector'.*only for \('hidden',\)"):
    tx.init(tree)
  tx = matopt.partition(
    {"hidden": optax.sgd(0.1), "vector": optax.set_to_zero()}, functools.partial(matopt.labels.by_role)
  )
  out, _ = tx.update(tree, tx.init(tree))
  np.testing.assert_array_equal(out["Dense_0"]["bias"], 0.0)
  np.testing.assert_allclose(out["Dense_0"]["kernel"], -0.1)
