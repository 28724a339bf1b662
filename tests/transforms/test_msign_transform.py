"""scale_by_msign on pytrees: matrix views, masking, errors."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from optax.contrib import MuonDimensionNumbers

import matopt
from matopt.linalg import METHODS, PRESETS


def _tree():
  rng = np.random.default_rng(0)
  return {
    "dense": {"kernel": jnp.asarray(rng.standard_normal((12, 20)), jnp.float32)},
    "conv": {"kernel": jnp.asarray(rng.standard_normal((3, 3, 4, 8)), jnp.float32)},
    "stack": jnp.asarray(rng.standard_normal((3, 6, 10)), jnp.float32),
  }


def test_each_leaf_is_msign_of_its_view():
  tree = _tree()
  dn = {
    "dense": {"kernel": None},
    "conv": {"kernel": None},
    "stack": MuonDimensionNumbers(reduction_axis=1, output_axis=2),
  }
  tx = matopt.scale_by_msign(coeffs="polar_express", dimension_numbers=dn)
  out, _ = jax.jit(tx.update)(tree, tx.init(tree))
  ref = functools.partial(matopt.msign, coeffs="polar_express")
  np.testing.assert_allclose(out["dense"]["kernel"], ref(tree["dense"]["kernel"]), atol=1e-5)
  conv = ref(tree["conv"]["kernel"].reshape(36, 8)).reshape(3, 3, 4, 8)
  np.testing.assert_allclose(out["conv"]["kernel"], conv, atol=1e-5)
  for i in range(3):
    np.testing.assert_allclose(out["stack"][i], ref(tree["stack"][i]), atol=1e-5)


def test_callable_dimension_numbers_and_svd_method():
  tree = {"w": jnp.asarray(np.random.default_rng(1).standard_normal((4, 5, 6)), jnp.float32)}
  tx = matopt.scale_by_msign(method="svd", dimension_numbers=lambda p: {"w": matopt.DimensionNumbers(1, 2)})
  out, _ = tx.update(tree, tx.init(tree))
  u, _, vh = np.linalg.svd(np.asarray(tree["w"][2], np.float64), full_matrices=False)
  np.testing.assert_allclose(out["w"][2], u @ vh, atol=1e-5)


def test_vector_leaf_error_names_path_at_init():
  tree = {"dense": {"kernel": jnp.ones((3, 4)), "bias": jnp.ones(4)}}
  tx = matopt.scale_by_msign()
  with pytest.raises(ValueError, match=r"scale_by_msign acts on matrices, but leaf 'dense/bias'"):
    tx.init(tree)
  with pytest.raises(ValueError, match="dense/bias"):
    tx.update(tree, optax.EmptyState())


def test_masked_vectors_are_skipped():
  tree = {"dense": {"kernel": jnp.ones((3, 4)) + jnp.eye(3, 4), "bias": jnp.ones(4)}}
  tx = optax.masked(matopt.scale_by_msign(), {"dense": {"kernel": True, "bias": False}})
  out, _ = tx.update(tree, tx.init(tree))
  np.testing.assert_array_equal(out["dense"]["bias"], tree["dense"]["bias"])
  np.testing.assert_allclose(out["dense"]["kernel"], matopt.msign(tree["dense"]["kernel"]), atol=1e-6)


@pytest.mark.parametrize(
  "kwargs, match",
  [
    ({"coeffs": "nope"}, "valid presets are"),
    ({"steps": -1}, "steps must be >= 1"),
    ({"method": "qr"}, "Unknown msign method"),
    ({"dimension_numbers": {"w": (0, 1)}}, "dimension_numbers must be None"),
  ],
)
def test_construction_errors(kwargs, match):
  with pytest.raises(ValueError, match=match):
    matopt.scale_by_msign(**kwargs)


def test_bf16_leaf_stays_bf16():
  tree = {"w": jnp.asarray(np.random.default_rng(2).standard_normal((8, 8)), jnp.bfloat16)}
  tx = matopt.scale_by_msign()
  out, _ = tx.update(tree, tx.init(tree))
  assert out["w"].dtype == jnp.bfloat16


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("coeffs", list(PRESETS))
def test_every_method_and_preset_is_msigns(method, coeffs):
  tree = {"w": jnp.asarray(np.random.default_rng(3).standard_normal((2, 8, 32)), jnp.float32)}
  tx = matopt.scale_by_msign(method=method, coeffs=coeffs, dimension_numbers=matopt.DimensionNumbers(1, 2))
  out, _ = jax.jit(tx.update)(tree, tx.init(tree))
  np.testing.assert_allclose(out["w"], matopt.msign(tree["w"], method=method, coeffs=coeffs), atol=1e-5)
