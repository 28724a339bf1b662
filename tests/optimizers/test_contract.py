"""One contract suite over every matopt optimizer (registry in registry.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from tests.optimizers.registry import REGISTRY

NAMES = sorted(REGISTRY)
VOCAB, CLASSES = 16, 8


class TinyNet(nnx.Module):
  """Embedding → hidden (+bias) → head: every role by_role knows."""

  def __init__(self, rngs: nnx.Rngs, dtype=jnp.float32):
    self.embed = nnx.Embed(VOCAB, 16, rngs=rngs, param_dtype=dtype)
    self.hidden = nnx.Linear(16, 32, rngs=rngs, param_dtype=dtype)
    self.head = nnx.Linear(32, CLASSES, rngs=rngs, param_dtype=dtype)

  def __call__(self, tokens):
    x = self.embed(tokens)
    return self.head(jax.nn.relu(self.hidden(x))).astype(jnp.float32)


def _data():
  tokens = jnp.arange(64, dtype=jnp.int32) % VOCAB
  return tokens, (tokens * 3) % CLASSES


def _loss(model, tokens, labels):
  return optax.softmax_cross_entropy_with_integer_labels(model(tokens), labels).mean()


def _split(dtype=jnp.float32):
  graphdef, params = nnx.split(TinyNet(nnx.Rngs(0), dtype), nnx.Param)
  return graphdef, nnx.to_pure_dict(params)


def _loss_fn(graphdef):
  def loss(params, tokens, labels):
    model = nnx.merge(graphdef, params)
    return _loss(model, tokens, labels)

  return loss


def _params_and_grads():
  graphdef, params = _split()
  return params, jax.grad(_loss_fn(graphdef))(params, *_data())


def _train(tx, params, loss, steps, *, grad_scale=1.0):
  tokens, labels = _data()
  state = tx.init(params)
  traces = []

  @jax.jit
  def step(params, state):
    traces.append(1)
    value, grads = jax.value_and_grad(loss)(params, tokens, labels)
    grads = jax.tree.map(lambda g: g * grad_scale, grads)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state, value

  losses = []
  for _ in range(steps):
    params, state, value = step(params, state)
    losses.append(float(value))
  return params, state, losses, len(traces)


@pytest.mark.parametrize("name", NAMES)
def test_trains_and_compiles_once(name):
  entry = REGISTRY[name]
  graphdef, params = _split()
  _, _, losses, n_traces = _train(entry.factory(entry.learning_rate), params, _loss_fn(graphdef), 60)
  assert n_traces == 1
  assert np.all(np.isfinite(losses))
  assert losses[-1] < 0.5 * losses[0], losses[::10]


@pytest.mark.parametrize("name", NAMES)
def test_state_structure_and_dtypes_stable(name):
  entry = REGISTRY[name]
  graphdef, params = _split()
  tx = entry.factory(entry.learning_rate)
  state0 = tx.init(params)
  _, state1, _, _ = _train(tx, params, _loss_fn(graphdef), 2)
  assert jax.tree.structure(state0) == jax.tree.structure(state1)
  sig = lambda s: jax.tree.map(lambda x: (jnp.shape(x), jnp.result_type(x)), s)
  assert sig(state0) == sig(state1)


@pytest.mark.parametrize("name", NAMES)
def test_zero_gradients_give_expected_finite_update(name):
  entry = REGISTRY[name]
  _, params = _split()
  tx = entry.factory(entry.learning_rate)
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates, _ = jax.jit(tx.update)(zeros, tx.init(params), params)
  expected = entry.zero_grad_update(params, entry.learning_rate)
  for u, e in zip(jax.tree.leaves(updates), jax.tree.leaves(expected)):
    assert np.all(np.isfinite(u))
    np.testing.assert_allclose(u, e, atol=1e-7, rtol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_bf16_params_stay_bf16(name):
  entry = REGISTRY[name]
  graphdef, params = _split(jnp.bfloat16)
  new_params, _, losses, _ = _train(entry.factory(entry.learning_rate), params, _loss_fn(graphdef), 5)
  for p in jax.tree.leaves(new_params):
    assert p.dtype == jnp.bfloat16 and np.all(np.isfinite(np.asarray(p, np.float32)))
  assert np.all(np.isfinite(losses))


@pytest.mark.parametrize("name", NAMES)
def test_inject_hyperparams_matches_and_controls_lr(name):
  entry = REGISTRY[name]
  params, grads = _params_and_grads()
  plain = entry.factory(entry.learning_rate)
  injected = optax.inject_hyperparams(entry.factory)(learning_rate=entry.learning_rate)
  u_plain, _ = plain.update(grads, plain.init(params), params)
  state = injected.init(params)
  u_inj, _ = jax.jit(injected.update)(grads, state, params)
  for a, b in zip(jax.tree.leaves(u_plain), jax.tree.leaves(u_inj)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  # Every learning rate set to 0 (muon also injects adam_learning_rate).
  for key in state.hyperparams:
    if key.endswith("learning_rate"):
      state.hyperparams[key] = jnp.zeros_like(state.hyperparams[key])
  u_zero, _ = jax.jit(injected.update)(grads, state, params)
  for u in jax.tree.leaves(u_zero):
    np.testing.assert_array_equal(u, 0.0)


@pytest.mark.parametrize("name", NAMES)
def test_multisteps_accumulates(name):
  entry = REGISTRY[name]
  params, grads = _params_and_grads()
  tx = optax.MultiSteps(entry.factory(entry.learning_rate), every_k_schedule=2)
  state = tx.init(params)
  u1, state = jax.jit(tx.update)(grads, state, params)
  u2, state = jax.jit(tx.update)(grads, state, params)
  inner = entry.factory(entry.learning_rate)
  expected, _ = inner.update(grads, inner.init(params), params)
  for a in jax.tree.leaves(u1):
    np.testing.assert_array_equal(a, 0.0)
  for a, b in zip(jax.tree.leaves(u2), jax.tree.leaves(expected)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("name", NAMES)
def test_apply_if_finite_skips_nan_step(name):
  entry = REGISTRY[name]
  params, grads = _params_and_grads()
  tx = optax.apply_if_finite(entry.factory(entry.learning_rate), max_consecutive_errors=3)
  state = tx.init(params)
  bad = jax.tree.map(lambda g: g.at[(0,) * g.ndim].set(jnp.nan), grads)
  u_bad, state = jax.jit(tx.update)(bad, state, params)
  for u in jax.tree.leaves(u_bad):
    np.testing.assert_array_equal(u, 0.0)
  update = jax.jit(tx.update)
  for _ in range(entry.silent_steps + 1):
    u_good, state = update(grads, state, params)
    assert all(np.all(np.isfinite(u)) for u in jax.tree.leaves(u_good))
  assert any(np.any(u != 0) for u in jax.tree.leaves(u_good))
  assert int(state.notfinite_count) == 0


@pytest.mark.parametrize("name", NAMES)
def test_flax_nnx_optimizer(name):
  entry = REGISTRY[name]
  model = TinyNet(nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, entry.factory(entry.learning_rate), wrt=nnx.Param)
  tokens, labels = _data()

  @nnx.jit
  def step(model, optimizer):
    loss, grads = nnx.value_and_grad(_loss)(model, tokens, labels)
    optimizer.update(model, grads)
    return loss

  losses = [float(step(model, optimizer)) for _ in range(30)]
  assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]
