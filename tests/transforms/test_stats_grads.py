"""``update(grads, state, params, stats_grads=...)`` of Shampoo and SOAP: the
statistics (L, R) come from ``stats_grads``, the moments and the update from
``grads``, through every wrapper that forwards extra arguments."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import matopt

# optax's wrappers (chain, inject_hyperparams, MultiSteps) are not
# strict-promotion clean; matopt's maths is checked strictly elsewhere.
standard = jax.numpy_dtype_promotion("standard")
BETA, B1 = 0.95, 0.9


def _tree(seed, shapes=None):
  rng = np.random.default_rng(seed)
  shapes = shapes or {"tall": (6, 3), "wide": (3, 7), "bias": (3,)}
  return {k: jnp.asarray(rng.standard_normal(s), jnp.float32) for k, s in shapes.items()}


PARAMS, G, S = _tree(0), _tree(1), _tree(2)


# Preconditioning from step 2 (roots / bases built there), so that step 3's
# update depends on the statistics.
def _shampoo():
  return matopt.scale_by_shampoo(beta=BETA, b1=B1, block_size=64, precondition_every=2)


def _soap():
  return matopt.scale_by_soap(precondition_every=2)


def _steps(tx, n=3, stats=None, grads=None):
  """n jitted updates with gradients G·(t+1) (statistics from S·(t+1) when given)."""
  grads = G if grads is None else grads
  state = tx.init(PARAMS)
  step = jax.jit(tx.update)
  outs = []
  for t in range(n):
    g = jax.tree.map(lambda x, t=t: (t + 1.0) * x, grads)
    kw = {} if stats is None else {"stats_grads": jax.tree.map(lambda x, t=t: (t + 1.0) * x, stats)}
    updates, state = step(g, state, PARAMS, **kw)
    outs.append(updates)
  return outs, state


def _assert_trees_equal(a, b):
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize("make", [_shampoo, _soap], ids=["shampoo", "soap"])
def test_stats_grads_equal_to_grads_is_bit_identical(make):
  want = _steps(make(), n=3)
  got = _steps(make(), n=3, stats=G)
  _assert_trees_equal(got, want)


def test_shampoo_statistics_from_stats_grads_momentum_from_grads():
  _, state = _steps(_shampoo(), n=1, stats=S)
  for name in ("tall", "wide"):
    s = S[name]
    np.testing.assert_allclose(
      state.stats_left[name][0, 0, 0], (1 - BETA) * s @ s.T, rtol=1e-5, atol=1e-7, err_msg=name
    )
    np.testing.assert_allclose(
      state.stats_right[name][0, 0, 0], (1 - BETA) * s.T @ s, rtol=1e-5, atol=1e-7, err_msg=name
    )
  _assert_trees_equal(state.mu, jax.tree.map(lambda g: (1 - B1) * g, G))
  # Three steps: the statistics are those of a run fed S as the gradient;
  # the momentum and the graft's moment are the plain run's on G; the
  # updates are neither run's.
  updates, state = _steps(_shampoo(), n=3, stats=S)
  updates_s, state_s = _run_on(S)
  updates_g, state_g = _run_on(G)
  for field in ("stats_left", "stats_right"):
    _assert_trees_equal(getattr(state, field), getattr(state_s, field))
  _assert_trees_equal(state.mu, state_g.mu)
  _assert_trees_equal(state.nu, state_g.nu)  # the graft's second moment, from G
  for name in ("tall", "wide"):
    assert not np.allclose(updates[-1][name], updates_g[-1][name]), f"{name}: the statistics had no effect"
    assert not np.allclose(updates[-1][name], updates_s[-1][name]), f"{name}: the update is not G's"


def _run_on(grads, make=_shampoo):
  """Three plain steps on ``grads`` (its own statistics)."""
  return _steps(make(), n=3, grads=grads)


def test_soap_statistics_from_stats_grads():
  _, state = _steps(_soap(), n=1, stats=S)
  for name in ("tall", "wide"):
    s = S[name]
    # SOAP's shampoo_beta defaults to b2 (0.95).
    np.testing.assert_allclose(state.stats_left[name][0], (1 - 0.95) * s @ s.T, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(state.stats_right[name][0], (1 - 0.95) * s.T @ s, rtol=1e-5, atol=1e-7)
  updates, state = _steps(_soap(), n=3, stats=S)
  updates_s, state_s = _run_on(S, _soap)
  assert not np.allclose(updates[-1]["tall"], updates_s[-1]["tall"])
  updates_g, state_g = _run_on(G, _soap)
  for field in ("stats_left", "stats_right", "basis_left", "basis_right"):
    _assert_trees_equal(getattr(state, field), getattr(state_s, field))
  _assert_trees_equal(state.mu, state_g.mu)
  assert not np.allclose(updates[-1]["tall"], updates_g[-1]["tall"])


def _want_left(name, s=S):
  return (1 - BETA) * s[name] @ s[name].T


@pytest.mark.parametrize("wrapper", ["chain", "inject", "multisteps"])
def test_wrappers_forward_stats_grads(wrapper):
  with standard:
    if wrapper == "chain":
      tx = optax.chain(_shampoo(), optax.scale(-0.1))
    elif wrapper == "inject":
      tx = optax.inject_hyperparams(matopt.shampoo, static_args=("block_size",))(
        learning_rate=0.1, beta=BETA, block_size=64
      )
    else:
      # MultiSteps forwards extra args unchanged (not accumulated): the inner
      # update at the emitting mini-step sees that call's stats_grads.
      tx = optax.MultiSteps(_shampoo(), every_k_schedule=2)
    state = tx.init(PARAMS)
    step = jax.jit(lambda g, s, st: tx.update(g, s, PARAMS, stats_grads=st))
    if wrapper == "multisteps":
      _, state = step(G, state, G)  # first mini-step: nothing emitted
      _, state = step(G, state, S)
      inner = state.inner_opt_state
    else:
      _, state = step(G, state, S)
      inner = state
    found = [s for s in jax.tree.leaves(inner, is_leaf=lambda x: hasattr(x, "stats_left")) if hasattr(s, "stats_left")]
    assert found
    np.testing.assert_allclose(found[0].stats_left["tall"][0, 0, 0], _want_left("tall"), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("which", ["matopt", "optax", "optax_masked_extra"])
def test_partition_with_full_stats_tree(which):
  labels = {"tall": "shampoo", "wide": "shampoo", "bias": "sgd"}
  transforms = {"shampoo": _shampoo(), "sgd": optax.sgd(0.1)}
  with standard:
    if which == "matopt":
      tx = matopt.partition(transforms, labels)
    elif which == "optax":
      tx = optax.partition(transforms, labels)
    else:
      tx = optax.partition(transforms, labels, mask_compatible_extra_args=True)
    state = tx.init(PARAMS)
    _, state = jax.jit(lambda g, s, st: tx.update(g, s, PARAMS, stats_grads=st))(G, state, S)
  inner = state.inner_states["shampoo"].inner_state
  for name in ("tall", "wide"):
    np.testing.assert_allclose(inner.stats_left[name][0, 0, 0], _want_left(name), rtol=1e-5, atol=1e-7)


def test_nnx_optimizer_forwards_stats_grads():
  model = nnx.Linear(6, 3, rngs=nnx.Rngs(0))
  with standard:
    opt = nnx.Optimizer(model, matopt.shampoo(0.1, beta=BETA, block_size=64), wrt=nnx.Param)
    grads = nnx.state(model, nnx.Param)
    s = jax.tree.map(lambda x: x + 1.0, grads)
    opt.update(model, grads, stats_grads=s)
  found = [
    x for x in jax.tree.leaves(opt.opt_state, is_leaf=lambda x: hasattr(x, "stats_left")) if hasattr(x, "stats_left")
  ]
  kernel = found[0].stats_left["kernel"]
  kernel = getattr(kernel, "get_value", lambda: kernel)()
  k = s["kernel"].get_value()
  np.testing.assert_allclose(kernel[0, 0, 0], (1 - BETA) * k @ k.T, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("make", [_shampoo, _soap], ids=["shampoo", "soap"])
@pytest.mark.parametrize(
  "bad, match",
  [
    ({**S, "tall": S["tall"][:, :2]}, r"'tall' has shape \(6, 2\)"),
    ({"tall": S["tall"], "wide": S["wide"]}, "no leaf 'bias'"),
    ({**S, "extra": S["bias"]}, "leaf 'extra'"),
  ],
  ids=["shape", "missing", "extra"],
)
def test_mismatched_stats_grads_name_the_leaf(make, bad, match):
  tx = make()
  with pytest.raises(ValueError, match=match):
    tx.update(G, tx.init(PARAMS), PARAMS, stats_grads=bad)


def test_explicit_mesh_equals_no_mesh():
  tx = _shampoo()
  update = jax.jit(lambda g, s, st: tx.update(g, s, PARAMS, stats_grads=st))
  want = update(G, tx.init(PARAMS), S)
  mesh = jax.make_mesh((2,), ("data",), axis_types=(jax.sharding.AxisType.Explicit,), devices=jax.devices()[:2])
  place = lambda t: jax.tree.map(
    lambda a: jax.device_put(a, NamedSharding(mesh, P("data") if a.shape[0] % 2 == 0 else P())), t
  )
  with jax.set_mesh(mesh):
    state = tx.init(place(PARAMS))
    got = jax.jit(lambda g, s, st, p: tx.update(g, s, p, stats_grads=st))(place(G), state, place(S), place(PARAMS))
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(jax.device_get(got)), jax.tree.leaves(want), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=jax.tree_util.keystr(path))
