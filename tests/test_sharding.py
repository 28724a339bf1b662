"""Distribution of per-matrix work over a mesh of 8 CPU devices: equal
results, per-device FLOPs that fall with the device count, stable state
shardings and one compilation."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

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


@pytest.mark.parametrize(
  "make",
  [
    lambda: matopt.scale_by_msign(coeffs="polar_express"),
    lambda: matopt.scale_by_lmo({"layer": "spectral", "other": "colnorm"}["layer"]),
  ],
  ids=["msign", "lmo"],
)
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


@pytest.mark.parametrize(
  "specs",
  [(P("data", "model"), P("data", "model")), (P(), P()), (P("data", "model"), P()), (P(None, ("model", "data")), P())],
  ids=["2-D", "replicated", "mixed", "two-axes-on-columns"],
)
def test_explicit_exchange_gives_each_device_whole_matrices(specs):
  # Explicit axes: map_stacked exchanges blocks inside its shard_map. Each of
  # 6 entries (padded to 8) must reach one device whole, from operands laid
  # out differently; a same-shape output returns in the first operand's
  # layout, another shape replicated. fn names a mesh axis (lax.axis_index),
  # as code running under shard_map may.
  mesh = _mesh(jax.sharding.AxisType.Explicit)
  rng = np.random.default_rng(0)
  a = [rng.standard_normal((1, 8, 16)).astype(np.float32) for _ in range(6)]
  b = [rng.standard_normal((1, 8, 16)).astype(np.float32) for _ in range(6)]

  def fn(stacks, key):
    x, y = stacks
    device = jax.lax.axis_index(("data", "model")).astype(x.dtype)
    return x + 2 * y + 0 * device, jnp.sum(x * y, axis=(1, 2)) * 0 + device

  with jax.set_mesh(mesh):
    put = lambda xs, spec: [jax.device_put(x, NamedSharding(mesh, P(None, *spec))) for x in xs]
    out = jax.jit(lambda a, b: sharding.map_stacked(fn, list(zip(a, b))))(put(a, specs[0]), put(b, specs[1]))
  devices = []
  for x, y, (same, other) in zip(a, b, out):
    np.testing.assert_allclose(np.asarray(same), x + 2 * y, rtol=1e-6)
    full = lambda spec: (*spec, *[None] * (3 - len(spec)))
    assert full(same.sharding.spec) == full(P(None, *specs[0]))
    devices.append(int(np.asarray(other)[0]))
  assert devices == list(range(6))  # entry c on device c, in the mesh's order


def test_without_a_mesh_nothing_is_constrained():
  # No mesh set: the same jaxpr as a plain batched call, no sharding ops.
  params = _params()
  del params["norm"]
  tx = matopt.scale_by_msign()
  state = tx.init(params)
  text = jax.jit(lambda g: tx.update(g, state)[0]).lower(params).as_text()
  assert "sharding" not in text


@pytest.mark.parametrize(
  "factory",
  [
    lambda: matopt.muon(0.02),
    lambda: matopt.scion(0.01, radii={"hidden": 1.0, "head": 8.0, "embedding": 1.0, "vector": 1.0}),
    lambda: matopt.normuon(0.02),
    lambda: matopt.adamuon(0.02),
  ],
  ids=["muon", "scion", "normuon", "adamuon"],
)
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


# Shampoo's roots and SOAP's eigenbases: 8 square leaves give 16 statistics
# of 64×64 and the 4 wide leaves 4 of 32×32 (padded to 8): 3 decompositions
# per device (2 + 1). The wide leaves' 128 side stays unpreconditioned
# (max_precond_dim=64): the 128×128 statistics of 32×128 gradients are
# rank-deficient, and SOAP's Adam ratio m/√v in their null space is round-
# off over round-off, different for any change of summation order.
PRECONDITIONED = {
  "shampoo_newton": lambda: matopt.scale_by_shampoo(
    precondition_every=1, root_method="newton", graft="none", max_precond_dim=64
  ),
  "shampoo_eigh": lambda: matopt.scale_by_shampoo(precondition_every=1, max_precond_dim=64),
  "soap": lambda: matopt.scale_by_soap(precondition_every=1, max_precond_dim=64),
}
PER_DEVICE_EIGHS = ["f32[32,32]", "f32[64,64]", "f32[64,64]"]  # one matrix per call


def _lapack_calls(compiled):
  """Per-device ``(target, result shape)`` of the eigh / QR custom calls;
  unit batch dims dropped (a batch of one is one matrix)."""
  calls = []
  for line in compiled.as_text().splitlines():
    target = re.search(r'custom_call_target="lapack_s(syevd|geqrf)_ffi"', line)
    if target and " custom-call(" in line:
      dims = re.search(r"f32\[([0-9,]+)\]", line).group(1).split(",")
      while len(dims) > 2 and dims[0] == "1":
        dims = dims[1:]
      calls.append((target.group(1), f"f32[{','.join(dims)}]"))
  return sorted(calls)


def _relative_error(a, b):
  return float(jnp.linalg.norm(a - b) / jnp.maximum(jnp.linalg.norm(b), 1e-30))


@pytest.mark.parametrize("name", list(PRECONDITIONED))
@pytest.mark.parametrize("axis_type", AXIS_TYPES, ids=["auto", "explicit"])
def test_preconditioners_sharded_equal_single_device_each_device_its_share(name, axis_type):
  tx = PRECONDITIONED[name]()
  params, grads = _params(), _params(seed=9)
  warmup = [_params(seed=s) for s in range(1, 5)]
  # Warm-up steps: SOAP's first only computes bases (its update is zero),
  # later ones refresh them by power iteration + QR. Different gradients:
  # one gradient is diagonal in its own eigenbases, and Adam's m/√v would
  # turn the round-off off the diagonal into O(1) entries.
  step = jax.jit(tx.update)
  state = tx.init(params)
  for g in warmup:
    _, state = step(g, state)
  single = step.lower(grads, state).compile()
  want, want_state = single(grads, state)
  mesh = _mesh(axis_type)
  sharded_grads = _put(grads, mesh)
  with jax.set_mesh(mesh):
    sharded_step = jax.jit(tx.update)
    sharded_state = sharding.init_state(tx, _put(params, mesh))
    for g in warmup:
      _, sharded_state = sharded_step(_put(g, mesh), sharded_state)
    compiled = sharded_step.lower(sharded_grads, sharded_state).compile()
    got, got_state = compiled(sharded_grads, sharded_state)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    assert _relative_error(a, b) < 1e-3
  # And the state (SOAP's eigenvectors up to sign: compare |Q|).
  for a, b in zip(jax.tree.leaves(got_state), jax.tree.leaves(want_state)):
    assert _relative_error(jnp.abs(a), jnp.abs(b)) < 2e-3
  # Each device decomposes whole statistics: its share of the 24, one per call.
  calls = _lapack_calls(compiled)
  eighs = [shape for target, shape in calls if target == "syevd"]
  if name == "soap":  # eigh on the first step, power step + QR on refreshes
    assert eighs == PER_DEVICE_EIGHS
    assert sorted(s for t, s in calls if t == "geqrf") == PER_DEVICE_EIGHS
  elif name == "shampoo_eigh":
    assert eighs == PER_DEVICE_EIGHS
  else:  # matmul-only roots (cost_analysis does not count LAPACK calls)
    assert _flops(compiled) < 0.3 * _flops(single), (_flops(compiled), _flops(single))


@pytest.mark.parametrize("name", ["shampoo_newton", "soap"])
@pytest.mark.parametrize("axis_type", AXIS_TYPES, ids=["auto", "explicit"])
def test_preconditioner_state_is_distributed_stable_and_compiles_once(name, axis_type):
  mesh = _mesh(axis_type)
  params = _put(_params(), mesh)
  grads = _put(_params(seed=1), mesh)
  tx = PRECONDITIONED[name]()
  state = sharding.init_state(tx, params)
  before = [x.sharding for x in jax.tree.leaves(state)]
  with jax.set_mesh(mesh):
    step = jax.jit(tx.update)
    for _ in range(3):
      _, state = step(grads, state, params)
  after = [x.sharding for x in jax.tree.leaves(state)]
  assert all(s.is_equivalent_to(t, x.ndim) for s, t, x in zip(before, after, jax.tree.leaves(state)))
  assert step._cache_size() == 1
  # Statistics, roots and bases: rows over all 8 devices (1/8 of each per device).
  square = [x for x in jax.tree.leaves(state) if x.ndim >= 3 and x.shape[-2:] == (64, 64)]
  assert len(square) >= 32
  for x in square:
    assert x.addressable_shards[0].data.shape[-2:] == (8, 64)


@pytest.mark.parametrize("axis_type", AXIS_TYPES, ids=["auto", "explicit"])
def test_replicated_parameters_state_compiles_once(axis_type):
  # A parameter placed replicated as P(): jit returns its state as P(None,)
  # under explicit axes; init_state must hand it out in that form already.
  mesh = _mesh(axis_type)
  params = _put(_params(), mesh)
  params["bias"] = jax.device_put(jnp.ones(64), NamedSharding(mesh, P()))
  grads = jax.tree.map(jnp.sin, params)
  tx = matopt.shampoo(1e-3, precondition_every=1)
  state = sharding.init_state(tx, params)
  with jax.set_mesh(mesh):
    step = jax.jit(tx.update)
    for _ in range(2):
      _, state = step(grads, state, params)
  assert step._cache_size() == 1


@pytest.mark.parametrize("name", ["muon", "normuon", "shampoo", "soap"])
def test_extreme_and_zero_gradients_stay_finite_on_a_mesh(name):
  # Peers report -inf/NaN only under sharding: the padding of a stack to the
  # device count (here 4 wide matrices padded to 8) is all-zero matrices, and
  # sharded reductions order sums differently. Zero, 1e-30 and 1e30 gradients
  # must give finite updates there too.
  factory = {
    "muon": lambda: matopt.muon(0.02),
    "normuon": lambda: matopt.normuon(0.02),
    "shampoo": lambda: matopt.shampoo(1e-3, precondition_every=1),
    "soap": lambda: matopt.soap(3e-3, precondition_every=1),
  }[name]
  mesh = _mesh()
  params = _put(_params(), mesh)
  tx = factory()
  with jax.set_mesh(mesh):
    step = jax.jit(tx.update)
    for scale in (0.0, 1e-30, 1e30):
      state = sharding.init_state(tx, params)
      grads = _put(jax.tree.map(lambda g, s=scale: g * s, _params(seed=3)), mesh)
      p = params
      for _ in range(3):
        updates, state = step(grads, state, p)
        p = jax.tree.map(jnp.add, p, updates)
      for leaf in jax.tree.leaves((updates, p)):
        assert bool(jnp.all(jnp.isfinite(leaf))), (name, scale)
