"""Reliability of every optimizer in the registry: finite inputs give finite
outputs (extreme scales, zero, rank-1, 1×n and n×1 matrices, bf16), and a
run saved and restored (orbax-checkpoint or plain arrays) continues
bit-for-bit like an uninterrupted one."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

import matopt
from tests.optimizers.registry import REGISTRY

NAMES = sorted(REGISTRY)


def _tree(dtype, seed=0):
  rng = np.random.default_rng(seed)
  shapes = {
    "embed": {"embedding": (10, 6)},
    "Dense_0": {"kernel": (6, 6), "bias": (6,)},
    "row": {"kernel": (1, 8)},
    "col": {"kernel": (8, 1)},
    "head": {"kernel": (6, 10)},
  }
  return {k: {n: jnp.asarray(rng.standard_normal(s), dtype) for n, s in d.items()} for k, d in shapes.items()}


def _cases(dtype):
  """Gradient trees: random at 1e-30 … 1e30, all zero, rank one."""
  base = _tree(jnp.float32, seed=1)
  cases = {f"scale {s:g}": jax.tree.map(lambda g, s=s: g * s, base) for s in (1e-30, 1e-10, 1.0, 1e10, 1e30)}
  cases["zero"] = jax.tree.map(jnp.zeros_like, base)

  def rank_one(g):
    if g.ndim < 2:
      return g
    u = jnp.arange(1, g.shape[0] + 1, dtype=jnp.float32)[:, None]
    v = jnp.linspace(-1, 1, g.shape[1], dtype=jnp.float32)[None, :]
    return u @ v

  cases["rank one"] = jax.tree.map(rank_one, base)
  return {k: jax.tree.map(lambda g: g.astype(dtype), v) for k, v in cases.items()}


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("name", NAMES)
def test_finite_inputs_give_finite_updates(name, dtype):
  entry = REGISTRY[name]
  tx = entry.factory(entry.learning_rate)
  params = _tree(dtype)
  update = jax.jit(tx.update)
  for case, grads in _cases(dtype).items():
    state = tx.init(params)
    p = params
    for _ in range(entry.silent_steps + 2):
      u, state = update(grads, state, p)
      p = optax.apply_updates(p, u)
      for path, leaf in jax.tree_util.tree_flatten_with_path((u, p))[0]:
        assert np.all(np.isfinite(np.asarray(leaf, np.float32))), (case, jax.tree_util.keystr(path))
    assert jax.tree.map(lambda x: x.dtype, p) == jax.tree.map(lambda x: x.dtype, params)


def _grads(step, params):
  return jax.tree.map(
    lambda x: jax.random.normal(jax.random.fold_in(jax.random.key(7), step), x.shape, x.dtype), params
  )


def _run(tx, params, state, steps):
  update = jax.jit(tx.update)
  for step in steps:
    u, state = update(_grads(step, params), state, params)
    params = optax.apply_updates(params, u)
  return params, state


@pytest.mark.parametrize("name", NAMES)
def test_resume_is_bit_exact(name, tmp_path):
  entry = REGISTRY[name]
  tx = entry.factory(entry.learning_rate)
  params = _tree(jnp.float32)
  # Six steps straight through (Shampoo/SOAP refresh every 2: both halves refresh).
  want, want_state = _run(tx, params, tx.init(params), range(6))
  half, half_state = _run(tx, params, tx.init(params), range(3))
  # (a) orbax-checkpoint, restored against the abstract state of a fresh init.
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(tmp_path / "ckpt", {"params": half, "state": half_state})
  checkpointer.wait_until_finished()
  target = jax.tree.map(ocp.utils.to_shape_dtype_struct, {"params": params, "state": tx.init(params)})
  restored = checkpointer.restore(tmp_path / "ckpt", target)
  # (b) plain numpy arrays, unflattened into a fresh init's structure.
  leaves = [np.asarray(x) for x in jax.tree.leaves(half_state)]
  plain_state = jax.tree.unflatten(jax.tree.structure(tx.init(params)), [jnp.asarray(x) for x in leaves])
  for p0, s0 in ((restored["params"], restored["state"]), (jax.tree.map(np.asarray, half), plain_state)):
    got, got_state = _run(tx, jax.tree.map(jnp.asarray, p0), s0, range(3, 6))
    jax.tree.map(np.testing.assert_array_equal, got, want)
    jax.tree.map(np.testing.assert_array_equal, got_state, want_state)


def test_mixed_rank_tree_routes_each_leaf():
  # 0-d, 1-D, 2-D and 4-D leaves: by_role sends ndim < 2 to "vector", a conv
  # kernel to "hidden"; muon then orthogonalises the conv's matrix view and
  # gives the vectors AdamW's first step, −η·sign(g) (m̂/√v̂ = g/|g|).
  rng = np.random.default_rng(3)
  params = {
    "conv": {
      "kernel": jnp.asarray(rng.standard_normal((3, 3, 4, 8)), jnp.float32),
      "bias": jnp.asarray(rng.standard_normal(8), jnp.float32),
    },
    "temperature": jnp.asarray(1.5, jnp.float32),
    "Dense_0": {"kernel": jnp.asarray(rng.standard_normal((8, 5)), jnp.float32)},
  }
  labels = matopt.labels.by_role(params)
  assert labels["conv"]["kernel"] == "hidden" and labels["Dense_0"]["kernel"] == "hidden"
  assert labels["conv"]["bias"] == "vector" and labels["temperature"] == "vector"
  grads = jax.tree.map(lambda x: jnp.asarray(rng.standard_normal(x.shape), jnp.float32), params)
  lr, adam_lr = 0.02, 1e-3
  tx = matopt.muon(lr, adam_learning_rate=adam_lr, nesterov=False, momentum=0.0)
  u, _ = tx.update(grads, tx.init(params), params)
  view = np.asarray(grads["conv"]["kernel"]).reshape(36, 8)
  want = -lr * np.asarray(matopt.msign(view)).reshape(3, 3, 4, 8)  # fan_out ≤ fan_in: shape factor 1
  np.testing.assert_allclose(u["conv"]["kernel"], want, rtol=1e-5, atol=1e-7)
  for leaf in ("temperature",):
    np.testing.assert_allclose(u[leaf], -adam_lr * np.sign(grads[leaf]), rtol=1e-4)
  np.testing.assert_allclose(u["conv"]["bias"], -adam_lr * np.sign(grads["conv"]["bias"]), rtol=1e-4)


@pytest.mark.parametrize("name", NAMES)
def test_random_trees_of_every_rank(name):
  # Random trees mixing 0-d, 1-D, 2-D and 4-D leaves: every optimizer inits,
  # steps finitely, keeps shapes and dtypes, and by_role routes ndim < 2 to
  # "vector" and everything else to a matrix role.
  entry = REGISTRY[name]
  rng = np.random.default_rng(sum(map(ord, name)))
  for _ in range(2):
    shapes = {
      "temperature": (),
      "Dense_0": {"bias": (int(rng.integers(1, 6)),)},
      "Conv_0": {"kernel": tuple(int(d) for d in rng.integers(1, 5, 4))},
      "Dense_1": {"kernel": tuple(int(d) for d in rng.integers(1, 7, 2))},
    }
    params = jax.tree.map(
      lambda s: jnp.asarray(rng.standard_normal(s), jnp.float32), shapes, is_leaf=lambda s: isinstance(s, tuple)
    )
    labels = matopt.labels.by_role(params)
    for leaf, label in zip(jax.tree.leaves(params), jax.tree.leaves(labels)):
      assert (label == "vector") == (leaf.ndim < 2), (leaf.shape, label)
    tx = entry.factory(entry.learning_rate)
    state = tx.init(params)
    # Compiled once per tree: op by op, each random shape compiles dozens of
    # primitives (half of this test's time before).
    update = jax.jit(tx.update)
    for step in range(entry.silent_steps + 2):
      u, state = update(_grads(step, params), state, params)
      assert jax.tree.map(lambda x: (x.shape, x.dtype), u) == jax.tree.map(lambda x: (x.shape, x.dtype), params)
      assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(u))
