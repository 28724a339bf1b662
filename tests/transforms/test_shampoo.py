"""scale_by_shampoo against a numpy transcription, the msign identity, guards."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import matopt
from matopt.transforms.shampoo import scale_by_shampoo


def np_inverse_root(a, p, eps):
  w, q = np.linalg.eigh(0.5 * (a + a.T))
  ridge = max(eps * w.max(), np.finfo(np.float32).tiny ** 0.5)
  noise = len(w) * np.finfo(np.float32).eps * w.max()  # float32 eigh's accuracy, as inverse_pth_root
  return (q * (np.maximum(w, noise) + ridge) ** (-1.0 / p)) @ q.T


def np_shampoo(grads, *, beta, exponent, eps, every, start, b1, graft, b2=0.95, graft_eps=1e-8):
  """Numpy transcription of the update rule in scale_by_shampoo's docstring."""
  m_, n_ = grads[0].shape
  L, R = np.zeros((m_, m_)), np.zeros((n_, n_))
  rl, rr = np.eye(m_), np.eye(n_)
  mom, v = np.zeros((m_, n_)), np.zeros((m_, n_))
  w = 1.0 if beta == 1.0 else 1.0 - beta
  out = []
  for t, g in enumerate(grads, start=1):
    L = beta * L + w * g @ g.T
    R = beta * R + w * g.T @ g
    mom = b1 * mom + (1 - b1) * g if b1 else g
    v = b2 * v + (1 - b2) * g * g
    if graft == "adam":
      a = (mom / (1 - b1**t if b1 else 1.0)) / (np.sqrt(v / (1 - b2**t)) + graft_eps)
    elif graft == "rmsprop":
      a = mom / (np.sqrt(v) + graft_eps)
    else:
      a = mom
    if t >= start and (t - start) % every == 0:
      rl, rr = np_inverse_root(L, 1 / exponent, eps), np_inverse_root(R, 1 / exponent, eps)
    if t < start:
      out.append(a)
      continue
    d = rl @ mom @ rr
    out.append(d * np.linalg.norm(a) / np.linalg.norm(d) if graft != "none" else d)
  return out


@pytest.mark.parametrize(
  "kw",
  [
    dict(beta=0.9, exponent=0.25, eps=1e-4, every=1, start=1, b1=0.0, graft="none"),
    dict(beta=1.0, exponent=0.25, eps=1e-4, every=2, start=1, b1=0.9, graft="adam"),
    dict(beta=0.5, exponent=0.5, eps=1e-3, every=1, start=3, b1=0.5, graft="rmsprop"),
    dict(beta=0.95, exponent=0.25, eps=1e-4, every=3, start=2, b1=0.9, graft="sgd"),
  ],
)
def test_matches_numpy_transcription(kw):
  rng = np.random.default_rng(0)
  grads = [rng.standard_normal((6, 9)) for _ in range(5)]
  tx = scale_by_shampoo(
    beta=kw["beta"],
    exponent=kw["exponent"],
    eps=kw["eps"],
    precondition_every=kw["every"],
    start_preconditioning_step=kw["start"],
    b1=kw["b1"],
    graft=kw["graft"],
  )
  state = tx.init({"w": jnp.zeros((6, 9))})
  update = jax.jit(tx.update)
  expected = np_shampoo(grads, **kw)
  for t, (g, e) in enumerate(zip(grads, expected)):
    u, state = update({"w": jnp.asarray(g, jnp.float32)}, state)
    np.testing.assert_allclose(u["w"], e, rtol=2e-3, atol=2e-4 * np.abs(e).max(), err_msg=f"step {t + 1}")


@pytest.mark.parametrize("shape", [(8, 8), (6, 12), (12, 6), (3, 4, 5)])
def test_no_accumulation_is_msign(shape):
  g = jnp.asarray(np.random.default_rng(1).standard_normal(shape), jnp.float32)
  dn = matopt.DimensionNumbers(1, 2) if len(shape) == 3 else None
  tx = scale_by_shampoo(beta=0.0, exponent=0.25, eps=1e-12, precondition_every=1, graft="none", dimension_numbers=dn)
  u, _ = tx.update({"w": g}, tx.init({"w": g}))
  np.testing.assert_allclose(u["w"], matopt.msign(g, method="svd"), atol=5e-4)


def test_blocks_are_preconditioned_independently():
  rng = np.random.default_rng(2)
  g = rng.standard_normal((8, 12))
  tx = scale_by_shampoo(beta=0.0, eps=1e-12, precondition_every=1, graft="none", block_size=4)
  u, state = tx.update({"w": jnp.asarray(g, jnp.float32)}, tx.init({"w": jnp.zeros((8, 12))}))
  assert state.stats_left["w"].shape == (1, 2, 3, 4, 4)
  for i in range(2):
    for j in range(3):
      block = g[4 * i : 4 * i + 4, 4 * j : 4 * j + 4]
      np.testing.assert_allclose(
        u["w"][4 * i : 4 * i + 4, 4 * j : 4 * j + 4],
        matopt.msign(jnp.asarray(block, jnp.float32), method="svd"),
        atol=5e-3,
      )  # float32 eigh of G Gᵀ squares κ


def test_graft_per_block_or_per_matrix():
  # Per block (Meta's DistributedShampoo): each block takes its graft block's
  # norm. Per matrix (Google's distributed_shampoo): the blocked Shampoo
  # direction is rescaled once, to the whole graft's norm.
  rng = np.random.default_rng(5)
  g = jnp.asarray(rng.standard_normal((8, 10)), jnp.float32)  # blocks 4 × (4, 4, 2)
  kw = {"beta": 0.0, "eps": 1e-6, "precondition_every": 1, "start_preconditioning_step": 1, "block_size": 4}

  def run(**options):
    tx = scale_by_shampoo(**kw, **options)
    return np.asarray(tx.update({"w": g}, tx.init({"w": g}))[0]["w"])

  d, per_block, per_matrix = run(graft="none"), run(graft="sgd"), run(graft="sgd", graft_per_block=False)
  gn = np.asarray(g)
  for i in range(0, 8, 4):
    for j in range(0, 10, 4):
      block = (slice(i, i + 4), slice(j, j + 4))
      np.testing.assert_allclose(np.linalg.norm(per_block[block]), np.linalg.norm(gn[block]), rtol=1e-5)
  np.testing.assert_allclose(per_matrix, d * np.linalg.norm(gn) / np.linalg.norm(d), rtol=1e-4, atol=1e-6)
  assert not np.allclose(per_block, per_matrix, rtol=1e-2)


def test_large_sides_skip_preconditioning_and_vectors_take_graft():
  rng = np.random.default_rng(3)
  params = {"w": jnp.zeros((4, 32)), "b": jnp.zeros(5)}
  grads = {
    "w": jnp.asarray(rng.standard_normal((4, 32)), jnp.float32),
    "b": jnp.asarray(rng.standard_normal(5), jnp.float32),
  }
  tx = scale_by_shampoo(beta=0.0, eps=1e-12, precondition_every=1, graft="sgd", max_precond_dim=16, block_size=None)
  u, state = tx.update(grads, tx.init(params))
  assert state.stats_right["w"].shape == ()
  np.testing.assert_array_equal(u["b"], grads["b"])
  # Left-only: L^{-1/4} G, rescaled to ‖G‖ (sgd graft).
  g = np.asarray(grads["w"], np.float64)
  d = np_inverse_root(g @ g.T, 4, 1e-12) @ g
  np.testing.assert_allclose(u["w"], d * np.linalg.norm(g) / np.linalg.norm(d), rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("method", ["eigh", "newton"])
def test_failure_guard_keeps_previous_root(method):
  rng = np.random.default_rng(4)
  g = jnp.asarray(rng.standard_normal((5, 7)), jnp.float32)
  tx = scale_by_shampoo(beta=0.5, precondition_every=1, graft="none", root_method=method, eps=1e-6)
  _, state = tx.update({"w": g}, tx.init({"w": g}))
  poisoned = state.stats_left["w"].at[0, 0, 0, 0, 0].set(jnp.nan)
  _, state2 = tx.update({"w": g}, state._replace(stats_left={"w": poisoned}))
  np.testing.assert_array_equal(state2.root_left["w"], state.root_left["w"])
  assert not np.array_equal(state2.root_right["w"], state.root_right["w"])


def test_zero_gradient_is_finite_zero():
  tx = scale_by_shampoo(precondition_every=1)
  params = {"w": jnp.zeros((4, 6)), "b": jnp.zeros(3)}
  u, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params))
  for x in jax.tree.leaves(u):
    np.testing.assert_array_equal(x, 0.0)


def test_state_dtypes_and_structure_stable():
  params = {"w": jnp.zeros((4, 6), jnp.bfloat16), "b": jnp.zeros(3, jnp.bfloat16)}
  tx = scale_by_shampoo(precondition_every=2)
  s0 = tx.init(params)
  grads = {"w": jnp.ones((4, 6), jnp.bfloat16), "b": jnp.ones(3, jnp.bfloat16)}
  u, s1 = jax.jit(tx.update)(grads, s0)
  sig = lambda s: jax.tree.map(lambda x: (x.shape, x.dtype), s)
  assert sig(s0) == sig(s1)
  assert u["w"].dtype == jnp.bfloat16


@pytest.mark.parametrize(
  "kwargs, match",
  [
    ({"beta": 1.5}, r"beta must lie in \[0.0, 1.0\]"),
    ({"exponent": 0.0}, "exponent must lie in"),
    ({"graft": "adagrad"}, r"Unknown graft 'adagrad'; valid grafts are"),
    ({"root_method": "svd"}, "Unknown root_method"),
    ({"precondition_every": 0}, "precondition_every must be an int >= 1"),
    ({"block_size": 0}, "block_size must be an int >= 1 or None"),
    ({"b1": 1.0}, r"b1 must lie in \[0.0, 1.0\)"),
  ],
)
def test_construction_errors(kwargs, match):
  with pytest.raises(ValueError, match=match):
    scale_by_shampoo(**kwargs)
