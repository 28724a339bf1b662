"""Distribution of per-matrix work over a mesh of 8 CPU devices: equal
results, per-device FLOPs that fall with the device count, stable state
shardings and one compilation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

import matopt
from matopt import sharding

pytestmark = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (host) devices")


AXIS_TYPES = [jax.sharding.AxisType.Auto, jax.sharding.AxisType.Explicit]


def _mesh(axis_type=jax.sharding.AxisType.Auto):
  return jax.make_mesh((4, 2), ("data", "model"), axis_types=(axis_type,) * 2)


def _params(seed=0):
  keys = jax.random.split(jax.random.key(seed), 12)
  params = {f"layer{i}": {"kernel": jax.random.normal(keys[i], (64, 64))} for i in range(8)}
  for i in range(4):  # a second group, padded from 4 to 8 matrices
    params[f"wide{i}"] = {"kernel": jax.random.normal(keys[8 + i], (32, 128))}
  params["norm"] = {"scale": jax.random.normal(jax.random.key(seed + 99), (64,))}
  return params


def _flops(compiled):
  cost = compiled.cost_analysis()
  return (cost[0] if isinstance(cost, list) else cost)["flops"]


def _put(tree, mesh):
  def place(x):
    spec = P("data", "model") if x.ndim == 2 else P(None, "data", "model") if x.ndim == 3 else P("data")
    return jax.device_put(x, NamedSharding(mesh, spec))
  return jax.tree.map(place, tree)


def test_map_grouped_matches_per_matrix_and_keeps_order():
  rng = np.random.default_rng(0)
  mats = [jnp.asarray(rng.standard_normal(s), jnp.float32) for s in [(1, 8, 8), (2, 8, 8), (1, 4, 8), (1, 8, 8)]]
  keys = ["a", "a", "a", "b"]
  calls = []

  def fn(stack, key):
    calls.append((stack.shape, key))
    return stack * (2.0 if key == "a" else 3.0)

  out = sharding.map_grouped(fn, mats, keys)
  for x, y, k in zip(mats, out, keys):
    np.testing.assert_array_equal(y, x * (2.0 if k == "a" else 3.0))
  # One call per (shape, dtype, key) group: the two (8, 8) "a" entries share one.
  assert sorted(calls, key=str) == sorted([((3, 8, 8), "a"), ((1, 4, 8), "a"), ((1, 8, 8), "b")], key=str)


@pytest.mark.parametrize("make", [
    lambda: matopt.scale_by_msign(coeffs="polar_express"),
    lambda: matopt.scale_by_lmo({"layer": "spectral", "other": "colnorm"}["layer"]),
], ids=["msign", "lmo"])
@pytest.mark.parametrize("axis_type", AXIS_TYPES, ids=["auto", "explicit"])
def test_sharded_equals_single_device_and_flops_fall(make, axis_type):
  params = _params()
  del params["norm"]
  tx = make()
  state = tx.init(params)
  update = lambda g: tx.update(g, state)[0]
  single = jax.jit(update).lower(params).compile()
  want = single(params)
  mesh = _mesh(axis_type)
  sharded_params = _put(params, mesh)
  with jax.set_mesh(mesh):
    compiled = jax.jit(update).lower(sharded_params).compile()
    got = compiled(sharded_params)
  for a, b, p in zip(jax.tree.leaves(got), jax.tree.leaves(want), jax.tree.leaves(sharded_params)):
    np.testing.assert_allclose(a, b, atol=2e-5)
    if axis_type == jax.sharding.AxisType.Explicit:  # the update comes back in its parameter's layout
      assert a.sharding.is_equivalent_to(p.sharding, p.ndim)
  # 8 square matrices over 8 devices: one each. 4 wide ones padded to 8.
  assert _flops(compiled) < 0.2 * _flops(single), (_flops(compiled), _flops(single))


def test_without_a_mesh_nothing_is_constrained():
  # No mesh set: the same jaxpr as a plain batched call, no sharding ops.
  params = _params()
  del params["norm"]
  tx = matopt.scale_by_msign()
  state = tx.init(params)
  text = jax.jit(lambda g: tx.update(g, state)[0]).lower(params).as_text()
  assert "sharding" not in text


@pytest.mark.parametrize("factory", [
    lambda: matopt.muon(0.02),
    lambda: matopt.scion(0.01, radii={"hidden": 1.0, "head": 8.0, "embedding": 1.0, "vector": 1.0}),
], ids=["muon", "scion"])
@pytest.mark.parametrize("axis_type", AXIS_TYPES, ids=["auto", "explicit"])
def test_optimizer_state_sharding_is_stable_and_compiles_once(factory, axis_type):
  mesh = _mesh(axis_type)
  params = _put(_params(), mesh)
  grads = _put(_params(seed=1), mesh)
  tx = factory()
  # Momentum is sharded like its parameter, step counts replicated.
  state = sharding.init_state(tx, params)
  arrays = jax.tree.leaves
  before = [x.sharding for x in arrays(state)]
  with jax.set_mesh(mesh):
    step = jax.jit(tx.update)
    for _ in range(3):
      updates, state = step(grads, state, params)
  after = [x.sharding for x in arrays(state)]
  assert [s.is_equivalent_to(t, x.ndim) for s, t, x in zip(before, after, arrays(state))] == [True] * len(before)
  momenta = [x for x in jax.tree.leaves(state) if x.shape == (64, 64)]
  assert momenta and all(m.sharding.spec == P("data", "model") for m in momenta)
  assert step._cache_size() == 1
  # And the update equals the one computed without any mesh.
  want_state = tx.init(_params())
  for _ in range(3):
    want, want_state = jax.jit(tx.update)(_params(seed=1), want_state, _params())
  for a, b in zip(jax.tree.leaves(updates), jax.tree.leaves(want)):
    np.testing.assert_allclose(a, b, atol=2e-5)


def test_small_groups_and_big_matrices_fall_back():
  mesh = _mesh()
  x = jax.device_put(jax.random.normal(jax.random.key(0), (1, 64, 64)), NamedSharding(mesh, P(None, "data", "model")))
  fn = lambda stack, key: matopt.msign(stack)
  with jax.set_mesh(mesh):
    one = jax.jit(lambda x: sharding.map_grouped(fn, [x])[0]).lower(x).compile()
    # Eight different matrices (a copy would be deduplicated by XLA).
    eight = lambda x: [x * (i + 1.0) + i for i in range(8)]
    big = jax.jit(lambda x: sharding.map_grouped(fn, eight(x), max_matrix_bytes=1024)).lower(x).compile()
    spread = jax.jit(lambda x: sharding.map_grouped(fn, eight(x))).lower(x).compile()
  ref = [matopt.msign(y) for y in eight(x)]
  np.testing.assert_allclose(one(x), ref[0], atol=1e-5)
  for out in (big(x), spread(x)):
    for a, b in zip(out, ref):
      np.testing.assert_allclose(a, b, atol=1e-5)
  # Eight matrices spread over eight devices: one each.
  whole = jax.jit(lambda x: sharding.map_grouped(fn, eight(x))).lower(jax.device_get(x)).compile()
  assert _flops(spread) < 0.15 * _flops(whole), (_flops(spread), _flops(whole))
