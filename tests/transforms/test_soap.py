"""scale_by_soap: Adam identity on diagonal gradients, numpy transcription,
first-step convention, unrotated sides, and faster descent than Adam."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from matopt.transforms.soap import scale_by_soap


def np_soap(grads, *, b1, b2, eps, every):
  """Numpy transcription of Vyas et al. 2025, Algorithms 3–4 (m kept unrotated),
  with the reference's start: bases from the first gradient
  (``start_preconditioning_step=1``)."""
  m_, n_ = grads[0].shape
  L, R = np.zeros((m_, m_)), np.zeros((n_, n_))
  mom, v = np.zeros((m_, n_)), np.zeros((m_, n_))
  out = []
  for t, g in enumerate(grads, start=1):
    if t == 1:
      L, R = (1 - b2) * g @ g.T, (1 - b2) * g.T @ g
      ql, qr = np.linalg.eigh(L)[1][:, ::-1], np.linalg.eigh(R)[1][:, ::-1]
      out.append(np.zeros_like(g))
      continue
    k = t - 1
    mom = b1 * mom + (1 - b1) * g
    gr = ql.T @ g @ qr
    v = b2 * v + (1 - b2) * gr * gr
    n = (ql.T @ mom @ qr / (1 - b1**k)) / (np.sqrt(v / (1 - b2**k)) + eps)
    out.append(ql @ n @ qr.T)
    L, R = b2 * L + (1 - b2) * g @ g.T, b2 * R + (1 - b2) * g.T @ g
    if k % every == 0:
      for side in ("l", "r"):
        stat, q = (L, ql) if side == "l" else (R, qr)
        perm = np.argsort(-np.diag(q.T @ stat @ q), kind="stable")
        q, r = np.linalg.qr(stat @ q[:, perm])
        q = q * np.where(np.diag(r) < 0, -1.0, 1.0)
        if side == "l":
          ql, v = q, v[perm, :]
        else:
          qr, v = q, v[:, perm]
  return out


# optax's own Adam is not strict-promotion clean (float ** int32 count).
optax_promotion = jax.numpy_dtype_promotion("standard")


def _run(tx, grads, shape):
  state = tx.init({"w": jnp.zeros(shape)})
  update = jax.jit(tx.update)
  outs = []
  for g in grads:
    u, state = update({"w": jnp.asarray(g, jnp.float32)}, state)
    outs.append(np.asarray(u["w"], np.float64))
  return outs, state


def test_diagonal_gradients_equal_adam_from_step_two():
  rng = np.random.default_rng(0)
  grads = [np.diag(rng.standard_normal(6)) for _ in range(8)]
  # ε well above float32 round-off: in the rotated basis an exact zero can
  # come back as ~1e-9 from QR, which ε = 1e-8 would amplify to O(0.1).
  soap, _ = _run(scale_by_soap(precondition_every=2, eps=1e-3, start_preconditioning_step=1), grads, (6, 6))
  np.testing.assert_array_equal(soap[0], 0.0)
  adam = optax.scale_by_adam(b1=0.95, b2=0.95, eps=1e-3)
  state = adam.init({"w": jnp.zeros((6, 6))})
  for g, s in zip(grads[1:], soap[1:]):
    with optax_promotion:
      u, state = adam.update({"w": jnp.asarray(g, jnp.float32)}, state)
    np.testing.assert_allclose(s, u["w"], atol=2e-4)


def test_second_moment_follows_eigenvalue_order_when_it_changes():
  # The dominant coordinate swaps halfway, so refreshed bases permute their
  # columns; Adam equality holds only if v is permuted with them.
  early = [np.diag([4.0, 1.0, 0.5, 0.2]) * (1 + 0.1 * t) for t in range(4)]
  late = [np.diag([0.1, 0.3, 6.0, 2.0]) * (1 + 0.1 * t) for t in range(8)]
  grads = early + late
  tx = scale_by_soap(b1=0.9, b2=0.5, precondition_every=1, eps=1e-3, start_preconditioning_step=1)
  soap, state = _run(tx, grads, (4, 4))
  basis = np.abs(np.asarray(state.basis_left["w"][0]))
  assert np.argmax(basis[:, 0]) == 2  # the new largest eigenvalue leads
  adam = optax.scale_by_adam(b1=0.9, b2=0.5, eps=1e-3)
  adam_state = adam.init({"w": jnp.zeros((4, 4))})
  for t, (g, s) in enumerate(zip(grads[1:], soap[1:]), start=2):
    with optax_promotion:
      u, adam_state = adam.update({"w": jnp.asarray(g, jnp.float32)}, adam_state)
    np.testing.assert_allclose(s, u["w"], atol=1e-3, err_msg=f"step {t}")


# Square gradients: after one rectangular gradient the longer side's
# statistic is rank deficient and eigh may pick any basis of its null space,
# so two correct implementations can differ there.
@pytest.mark.parametrize("shape", [(6, 6), (7, 7)])
def test_matches_numpy_transcription(shape):
  rng = np.random.default_rng(1)
  grads = [rng.standard_normal(shape) for _ in range(7)]
  got, _ = _run(
    scale_by_soap(b1=0.9, b2=0.95, eps=1e-3, precondition_every=2, start_preconditioning_step=1), grads, shape
  )
  want = np_soap(grads, b1=0.9, b2=0.95, eps=1e-3, every=2)
  for t, (a, b) in enumerate(zip(got, want)):
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-3, err_msg=f"step {t + 1}")


def test_vectors_get_adam_and_long_sides_stay_unrotated():
  rng = np.random.default_rng(2)
  params = {"b": jnp.zeros(4), "w": jnp.zeros((3, 20))}
  tx = scale_by_soap(max_precond_dim=10, eps=1e-3, start_preconditioning_step=1)
  state = tx.init(params)
  assert state.basis_right["w"].shape == () and state.basis_left["w"].shape == (1, 3, 3)
  adam = optax.scale_by_adam(b1=0.95, b2=0.95, eps=1e-3)
  astate = adam.init(params)
  for t in range(4):
    g = {
      "b": jnp.asarray(rng.standard_normal(4), jnp.float32),
      "w": jnp.asarray(rng.standard_normal((3, 20)), jnp.float32),
    }
    u, state = tx.update(g, state)
    if t:
      with optax_promotion:
        ua, astate = adam.update(g, astate)
      np.testing.assert_allclose(u["b"], ua["b"], rtol=1e-5, atol=1e-6)


def test_faster_than_adam_on_ill_conditioned_least_squares():
  # f(W) = ½‖A W B − C‖²: Hessian (AᵀA) ⊗ (B Bᵀ) is Kronecker-factored and
  # ill-conditioned (κ(A) = κ(B) = 100), the case SOAP's basis is made for.
  rng = np.random.default_rng(3)

  def conditioned(n, kappa):
    q1, _ = np.linalg.qr(rng.standard_normal((n, n)))
    q2, _ = np.linalg.qr(rng.standard_normal((n, n)))
    return jnp.asarray((q1 * np.geomspace(1, 1 / kappa, n)) @ q2.T, jnp.float32)

  a, b = conditioned(16, 100.0), conditioned(12, 100.0)
  c = a @ jnp.asarray(rng.standard_normal((16, 12)), jnp.float32) @ b
  loss = lambda w: 0.5 * jnp.sum((a @ w @ b - c) ** 2)

  def final_loss(tx, steps=150):
    w = jnp.zeros((16, 12))
    state = tx.init(w)

    @jax.jit
    def step(w, state):
      u, state = tx.update(jax.grad(loss)(w), state, w)
      return optax.apply_updates(w, u), state

    for _ in range(steps):
      w, state = step(w, state)
    return float(loss(w))

  lrs = (3e-3, 1e-2, 3e-2, 1e-1)
  # The reference's start (bases from step 1), the setting this margin was
  # set for: with the default start (step 5 here) the best loss is 0.58×
  # Adam's instead of 0.44× (both at η = 0.1).
  best_soap = min(
    final_loss(optax.chain(scale_by_soap(precondition_every=5, start_preconditioning_step=1), optax.scale(-lr)))
    for lr in lrs
  )
  with optax_promotion:
    best_adam = min(final_loss(optax.adam(lr, b1=0.95, b2=0.95)) for lr in lrs)
  assert best_soap < 0.5 * best_adam, (best_soap, best_adam)


def test_state_stable_and_bf16():
  params = {"w": jnp.zeros((4, 6), jnp.bfloat16), "b": jnp.zeros(3, jnp.bfloat16)}
  tx = scale_by_soap(precondition_every=1)
  s0 = tx.init(params)
  grads = jax.tree.map(lambda p: jnp.ones_like(p) + 0.5, params)
  u, s1 = jax.jit(tx.update)(grads, s0)
  u, s2 = jax.jit(tx.update)(grads, s1)
  sig = lambda s: jax.tree.map(lambda x: (x.shape, x.dtype), s)
  assert sig(s0) == sig(s1) == sig(s2)
  assert u["w"].dtype == jnp.bfloat16 and np.all(np.isfinite(np.asarray(u["w"], np.float32)))


def test_zero_gradients_are_finite_zero():
  tx = scale_by_soap(precondition_every=1)
  params = {"w": jnp.zeros((4, 6)), "b": jnp.zeros(3)}
  state = tx.init(params)
  for _ in range(3):
    u, state = tx.update(params, state)
    for x in jax.tree.leaves(u):
      np.testing.assert_array_equal(x, 0.0)


@pytest.mark.parametrize(
  "kwargs, match",
  [
    ({"b1": 1.0}, r"b1 must lie in \[0.0, 1.0\)"),
    ({"b2": -0.1}, "b2 must lie in"),
    ({"shampoo_beta": 1.0}, "shampoo_beta must lie in"),
    ({"precondition_every": 0}, "precondition_every must be an int >= 1"),
    ({"max_precond_dim": 2.5}, "max_precond_dim must be an int >= 1"),
  ],
)
def test_construction_errors(kwargs, match):
  with pytest.raises(ValueError, match=match):
    scale_by_soap(**kwargs)
