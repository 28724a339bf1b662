"""Shampoo and SOAP under ``optax.inject_hyperparams`` with no ``static_args``:
every numeric option arrives as a (traced) array, results equal the plain
optimizer's, and shape-fixing options say to list them in ``static_args``."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import matopt

# optax's own transforms (inject_hyperparams, scale_by_learning_rate) are not
# strict-promotion clean; matopt's maths is checked strictly elsewhere.
optax_promotion = jax.numpy_dtype_promotion("standard")

FACTORIES = {
  "shampoo": matopt.shampoo,
  "soap": matopt.soap,
  # Non-default values of every traceable option, so that none is ignored.
  "shampoo_options": lambda learning_rate: matopt.shampoo(
    learning_rate,
    b1=0.5,
    beta=1.0,
    exponent=0.5,
    eps=1e-6,
    precondition_every=3,
    start_preconditioning_step=2,
    weight_decay=0.1,
  ),
  "soap_options": lambda learning_rate: matopt.soap(
    learning_rate, b1=0.0, b2=0.9, eps=1e-6, precondition_every=3, start_preconditioning_step=1, weight_decay=0.0
  ),
}


def _params():
  rng = np.random.default_rng(0)
  shapes = {"tall": (12, 5), "wide": (5, 12), "square": (6, 6), "bias": (5,), "scale": ()}
  return {k: jnp.asarray(rng.standard_normal(s), jnp.float32) for k, s in shapes.items()}


def _grads(t):
  rng = np.random.default_rng(100 + t)
  return jax.tree.map(lambda p: jnp.asarray(rng.standard_normal(p.shape), jnp.float32), _params())


def _run(tx, steps):
  params = _params()
  state = tx.init(params)
  step = jax.jit(tx.update)
  for t in range(steps):
    updates, state = step(_grads(t), state, params)
    params = optax.apply_updates(params, updates)
  return params, step


@pytest.mark.parametrize("name", list(FACTORIES))
def test_inject_hyperparams_out_of_the_box_equals_plain(name):
  factory = FACTORIES[name]
  with optax_promotion:
    injected = optax.inject_hyperparams(factory)(learning_rate=1e-2)
    # Defaults are bound as arrays, not kept as Python numbers.
    state = injected.init(_params())
    if name in ("shampoo", "soap"):
      assert isinstance(state.hyperparams["precondition_every"], jax.Array)
      assert isinstance(state.hyperparams["b1"], jax.Array)
    # 12 steps: past the default start (10) and, for the *_options, several refreshes.
    got, step = _run(injected, 12)
    want, _ = _run(factory(1e-2), 12)
  assert step._cache_size() == 1
  for k in want:
    np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6, err_msg=k)
  assert any(not np.allclose(want[k], _params()[k]) for k in want)


def test_momentum_and_period_are_schedulable():
  # b1 from a schedule; the refresh period (and with it the default start)
  # changed in the state of an already jitted step.
  with optax_promotion:
    tx = optax.inject_hyperparams(matopt.shampoo)(learning_rate=1e-2, b1=optax.linear_schedule(0.0, 0.9, 5))
    got, _ = _run(tx, 6)
    step = jax.jit(tx.update)
    roots = {}
    for every in (10, 2):
      state = tx.init(_params())
      state.hyperparams["precondition_every"] = jnp.asarray(every)
      for t in range(3):
        _, state = step(_grads(t), state, _params())
      roots[every] = state.inner_state[0].root_left["tall"]
  assert step._cache_size() == 1
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(got))
  eye = np.broadcast_to(np.eye(12), roots[10].shape)
  np.testing.assert_array_equal(roots[10], eye)  # first root at step 10
  assert not np.allclose(roots[2], eye)  # first root at step 2


@pytest.mark.parametrize(
  "factory, option",
  [
    (matopt.shampoo, "block_size"),
    (matopt.soap, "max_precond_dim"),
    (
      lambda learning_rate, max_precond_dim=None: optax.chain(
        matopt.scale_by_shampoo(max_precond_dim=max_precond_dim), optax.scale(-learning_rate)
      ),
      "max_precond_dim",
    ),
  ],
)
def test_injected_shape_option_names_static_args(factory, option):
  with optax_promotion:
    tx = optax.inject_hyperparams(factory)(learning_rate=1e-2, **{option: 4})
    with pytest.raises(ValueError, match=rf"{option} fixes the shapes.*static_args=\('{option}',\)"):
      tx.init(_params())
    # Listed in static_args it stays a Python int and works.
    tx = optax.inject_hyperparams(factory, static_args=(option,))(learning_rate=1e-2, **{option: 4})
    _run(tx, 2)


def test_traced_options_are_still_checked_when_concrete():
  with pytest.raises(ValueError, match="precondition_every must be an int >= 1"):
    matopt.scale_by_soap(precondition_every=jnp.asarray(0))
  with pytest.raises(ValueError, match="start_preconditioning_step must be an int >= 1"):
    matopt.scale_by_shampoo(start_preconditioning_step=jnp.asarray(1.5))
  with pytest.raises(ValueError, match="root_method='newton' needs a static exponent"):
    matopt.scale_by_shampoo(root_method="newton", exponent=jnp.asarray(0.25))
