"""The maths of :func:`matopt.sampled_label_grads`: the gradient at sampled
labels estimates the Gauss–Newton matrix without bias, the true-label
statistics (empirical Fisher) do not, and the loss and gradient are the plain
ones.

For softmax regression (``logits = X @ W``) the Hessian of the mean
cross-entropy is exactly its Gauss–Newton matrix, so ``jax.hessian`` gives an
independent reference, and Shampoo's Gauss–Newton factors are its partial
traces ``L* = Σ_j H[a, j, b, j]``, ``R* = Σ_i H[i, a, i, b]``.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import matopt

N, D, C = 64, 5, 4  # examples, features, classes: W is tall (5, 4)
K = 8192  # sampled-label keys, vmapped
CHUNKS = 16  # K split into CHUNKS estimates of K / CHUNKS keys each


def _linear(w, x):
  return x @ w


def _problem(seed=0, n=N, d=D, c=C):
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.standard_normal((n, d)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((d, c)), jnp.float32)
  y = jnp.asarray(rng.integers(0, c, n), jnp.int32)
  return x, w, y


def _mean_loss(logits_fn, x, y, where=None):
  def loss(w):
    ce = optax.softmax_cross_entropy_with_integer_labels(logits_fn(w, x), y)
    if where is None:
      return ce.mean()
    return jnp.sum(where * ce) / jnp.sum(where)

  return loss


@jax.jit
def _traces(h):
  return jnp.einsum("ajbj->ab", h), jnp.einsum("iaib->ab", h)


def _gn_factors(loss, w):
  """L*, R*: partial traces of the exact Gauss–Newton matrix (the Hessian here)."""
  return _traces(jax.jit(jax.hessian(loss))(w))


@functools.cache
def _problem0_factors():
  x, w, y = _problem(0)
  return _gn_factors(_mean_loss(_linear, x, y), w)


def _rel(a, b):
  return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


@jax.jit
def _factor_estimates(stats):
  """Mean of G Gᵀ and Gᵀ G over the keys (leading axis) of stacked (K, d, c) gradients."""
  k = stats.shape[0]
  return jnp.einsum("kaj,kbj->ab", stats, stats) / k, jnp.einsum("kja,kjb->ab", stats, stats) / k


def _sampled_stats(logits_fn, w, x, y, seed, **kw):
  keys = jax.random.split(jax.random.key(seed), K)
  fn = lambda k: matopt.sampled_label_grads(logits_fn, w, x, y, k, **kw).stats_grads
  return jax.jit(jax.vmap(fn))(keys)


def _assert_converges(stats, want_l, want_r, tol):
  """The mean over all K keys is within ``tol`` of (L*, R*), and its error is
  at most half the typical error of K/16-key means: an unbiased mean's error
  falls like 1/√K (a quarter here), a biased one's stalls at the bias."""
  got_l, got_r = _factor_estimates(stats)
  chunks = [_factor_estimates(s) for s in jnp.split(stats, CHUNKS)]
  for name, got, want, i in (("L", got_l, want_l, 0), ("R", got_r, want_r, 1)):
    err = _rel(got, want)
    chunk_err = float(np.mean([_rel(c[i], want) for c in chunks]))
    assert err < tol, f"{name}: relative error {err:.4f} over {K} keys, want < {tol}"
    assert err < 0.5 * chunk_err, (
      f"{name}: error {err:.4f} over {K} keys is not below half the mean error {chunk_err:.4f} of"
      f" {K // CHUNKS}-key means (1/sqrt(K) predicts a quarter)"
    )


# Measured with these seeds (d=5, c=4, N=64): 1.0–1.4% for L and 0.5–1.3% for R
# at K=16384 across seeds 0–2 and the three variants; EF errors 13–19 (batch) and 1.7–2.4 (per example).
@pytest.mark.parametrize("kw", [{}, {"num_samples": 3}, {"fraction": 0.25}], ids=["plain", "samples3", "fraction"])
def test_sampled_statistics_converge_to_gauss_newton_factors(kw):
  x, w, y = _problem(0)
  want_l, want_r = _problem0_factors()
  _assert_converges(_sampled_stats(_linear, w, x, y, 1, **kw), want_l, want_r, tol=0.03)


def test_empirical_fisher_is_not_the_gauss_newton_factors():
  x, w, y = _problem(0)
  loss = _mean_loss(_linear, x, y)
  want_l, want_r = _problem0_factors()
  g = jax.grad(loss)(w)
  # The true-label batch gradient scaled like stats_grads (√N G): N G Gᵀ.
  batch = (N * g @ g.T, N * g.T @ g)
  # The per-example empirical Fisher (1/N) Σ_x G_{x,y} G_{x,y}ᵀ.
  per_example = jax.vmap(
    lambda xi, yi: jax.grad(lambda w: optax.softmax_cross_entropy_with_integer_labels(xi @ w, yi))(w)
  )(x, y)
  fisher = _factor_estimates(per_example)
  for what, (got_l, got_r) in (("N G Gᵀ", batch), ("per-example empirical Fisher", fisher)):
    err_l, err_r = _rel(got_l, want_l), _rel(got_r, want_r)
    # Measured: batch 19.2 (L) and 15.1 (R); per example 1.78 and 1.73. The
    # sampled estimate is within 0.03 of them with K=16384 keys.
    assert err_l > 1.0 and err_r > 1.0, (
      f"{what}: relative distance to the Gauss–Newton factors is {err_l:.2f} (L), {err_r:.2f} (R);"
      " expected > 1 (measured 19/15 for N G Gᵀ, 1.8/1.7 per example): y_x in place of ŷ should matter"
    )


def test_loss_grads_and_logits_equal_plain_autodiff():
  x, w, y = _problem(3)
  key = jax.random.key(0)
  mask = jnp.asarray(np.random.default_rng(4).random(N) < 0.6, jnp.float32)
  for kw, where in (({}, None), ({"fraction": 0.25}, mask)):
    out = jax.jit(lambda w, where, kw=kw: matopt.sampled_label_grads(_linear, w, x, y, key, where=where, **kw))(
      w, where
    )
    loss, grads = jax.jit(jax.value_and_grad(_mean_loss(_linear, x, y, where)))(w)
    np.testing.assert_allclose(out.loss, loss, rtol=1e-6, err_msg=str(kw))
    np.testing.assert_allclose(out.grads, grads, rtol=1e-5, atol=1e-7, err_msg=str(kw))
    np.testing.assert_array_equal(out.logits, x @ w, err_msg=str(kw))  # back in the inputs' order
    assert out.loss.dtype == jnp.float32 and out.grads.dtype == w.dtype
    assert out.stats_grads.shape == w.shape
  # A masked mean, not the plain one.
  assert abs(float(out.loss) - float(jax.jit(_mean_loss(_linear, x, y))(w))) > 1e-3


def test_sequence_model_with_masked_tokens_is_unbiased():
  b, t, d, c = 8, 6, 4, 5  # W wide-ish (4, 5)
  rng = np.random.default_rng(5)
  x = jnp.asarray(rng.standard_normal((b, t, d)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((d, c)), jnp.float32)
  y = jnp.asarray(rng.integers(0, c, (b, t)), jnp.int32)
  where = jnp.asarray(rng.random((b, t)) < 0.7)
  tokens = lambda w, x: jnp.einsum("btd,dc->btc", x, w)
  want_l, want_r = _gn_factors(_mean_loss(tokens, x, y, where.astype(jnp.float32)), w)
  _assert_converges(_sampled_stats(tokens, w, x, y, 2, where=where), want_l, want_r, tol=0.03)
  # Masked tokens do not enter the statistics: changing their inputs changes nothing.
  x2 = jnp.where(where[..., None], x, 100.0)
  key = jax.random.key(7)
  run = jax.jit(lambda x: matopt.sampled_label_grads(tokens, w, x, y, key, where=where))
  a, b2 = run(x), run(x2)
  np.testing.assert_allclose(a.stats_grads, b2.stats_grads, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(a.grads, b2.grads, rtol=1e-5, atol=1e-6)


def test_nnx_equals_functional_form():
  model = nnx.Linear(D, C, rngs=nnx.Rngs(0))
  x, _, y = _problem(6)
  key = jax.random.key(3)
  graphdef, params = nnx.split(model, nnx.Param)
  fn = lambda p, x: nnx.merge(graphdef, p)(x)
  for kw in ({},):
    want = matopt.sampled_label_grads(fn, params, x, y, key, **kw)
    got = matopt.nnx_sampled_label_grads(model, x, y, key, **kw)
    assert isinstance(got.grads, nnx.State)
    for name in ("grads", "stats_grads"):
      for a, b in zip(jax.tree.leaves(getattr(got, name)), jax.tree.leaves(getattr(want, name)), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7, err_msg=f"{name} {kw}")
    np.testing.assert_allclose(got.loss, want.loss, rtol=1e-6)
    np.testing.assert_allclose(got.logits, model(x), rtol=1e-6)


class _BNModel(nnx.Module):
  def __init__(self, rngs):
    self.linear = nnx.Linear(D, C, rngs=rngs)
    self.bn = nnx.BatchNorm(C, momentum=0.5, rngs=rngs)

  def __call__(self, x):
    return self.bn(self.linear(x))


def test_nnx_batch_stats_updated_like_a_plain_call():
  x, _, y = _problem(7)
  model, plain = _BNModel(nnx.Rngs(0)), _BNModel(nnx.Rngs(0))
  model.train(), plain.train()
  out = matopt.nnx_sampled_label_grads(model, x, y, jax.random.key(0))
  logits = plain(x)
  np.testing.assert_allclose(out.logits, logits, rtol=1e-5, atol=1e-6)
  mean, var = model.bn.mean.get_value(), model.bn.var.get_value()
  assert not np.allclose(mean, 0.0), "the batch statistics were not updated"
  np.testing.assert_allclose(mean, plain.bn.mean.get_value(), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(var, plain.bn.var.get_value(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
  "case, match",
  [
    ("num_samples0", "num_samples"),
    ("fraction0", "fraction"),
    ("fraction1.5", "fraction"),
    ("labels_scalar", "leading batch axis"),
    ("inputs_axis", r"inputs\['b'\]"),
    ("where_shape", "where has shape"),
    ("logits_shape", "logits"),
  ],
)
def test_bad_inputs_raise(case, match):
  x, w, y = _problem(0, n=8)
  fn = lambda w, xs: xs["a"] @ w
  inputs = {"a": x, "b": x}
  args, kw = (fn, w, inputs, y, jax.random.key(0)), {}
  if case == "num_samples0":
    kw = {"num_samples": 0}
  elif case == "fraction0":
    kw = {"fraction": 0.0}
  elif case == "fraction1.5":
    kw = {"fraction": 1.5}
  elif case == "labels_scalar":
    args = (fn, w, inputs, y[0], jax.random.key(0))
  elif case == "inputs_axis":
    args = (fn, w, {"a": x, "b": x[:5]}, y, jax.random.key(0))
  elif case == "where_shape":
    kw = {"where": jnp.ones((8, 2))}
  elif case == "logits_shape":
    args = (lambda w, xs: (xs["a"] @ w)[:, None], w, inputs, y, jax.random.key(0))
  with pytest.raises(ValueError, match=match):
    matopt.sampled_label_grads(*args, **kw)


def test_zero_weights_and_bf16_logits():
  x, w, y = _problem(0, n=8)
  out = jax.jit(lambda w: matopt.sampled_label_grads(_linear, w, x, y, jax.random.key(0), where=jnp.zeros(8)))(w)
  for g in (out.grads, out.stats_grads):
    assert np.all(np.isfinite(g)) and not np.any(g), "zero weights must give finite zero gradients"
  assert np.isfinite(out.loss) and float(out.loss) == 0.0
  bf16 = lambda w, x: (x @ w).astype(jnp.bfloat16)
  out = jax.jit(lambda w: matopt.sampled_label_grads(bf16, w, x, y, jax.random.key(0)))(w)
  assert out.logits.dtype == jnp.bfloat16
  assert out.grads.dtype == out.stats_grads.dtype == jnp.float32
  assert np.all(np.isfinite(out.grads)) and np.all(np.isfinite(out.stats_grads))
  assert np.any(out.stats_grads)
  np.testing.assert_allclose(out.grads, jax.jit(jax.grad(_mean_loss(_linear, x, y)))(w), rtol=0.05, atol=2e-3)
