"""One schedule given as learning_rate shapes every leaf's step, the AdamW-routed ones too."""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import matopt
from matopt.experiments import optimizers as experiment_optimizers
from matopt.experiments.config import Schedule

PEAK = 0.02
SCHEDULE = optax.warmup_cosine_decay_schedule(0.0, PEAK, 4, 20)
# The Muon family: hidden matrices take Muon, the rest the auxiliary AdamW.
FACTORIES = {
  "muon": matopt.muon,
  "normuon": matopt.normuon,
  "adamuon": matopt.adamuon,
  # No attention here: QK-clip, given no logits to clip, leaves Muon's step as is.
  "muon_clip": lambda learning_rate, **kw: _no_logits(matopt.muon_clip(learning_rate, **kw)),
}
AUX = ("embed/embedding", "Dense_0/bias", "LayerNorm_0/scale", "head/kernel")


def _no_logits(tx):
  return optax.GradientTransformation(tx.init, lambda u, s, p: tx.update(u, s, p, max_logits={}))


def _normal(shape, seed):
  return jax.random.normal(jax.random.key(seed), shape)


def _params():
  return {
    "embed": {"embedding": _normal((12, 6), 0)},
    "Dense_0": {"kernel": _normal((6, 10), 1), "bias": _normal((10,), 2)},
    "Dense_1": {"kernel": _normal((10, 7), 3)},
    "LayerNorm_0": {"scale": 1.0 + 0.1 * _normal((7,), 4)},
    "head": {"kernel": _normal((7, 5), 5)},
  }


def _grads(params, k):
  leaves, treedef = jax.tree.flatten(params)
  return treedef.unflatten([_normal(p.shape, 100 * k + i) for i, p in enumerate(leaves)])


def _run(tx, params, steps):
  state = tx.init(params)
  update = jax.jit(lambda g, s: tx.update(g, s, params))
  out = []
  for k in range(steps):
    u, state = update(_grads(params, k), state)
    out.append({"/".join(str(e.key) for e in path): x for path, x in jax.tree_util.tree_flatten_with_path(u)[0]})
  return out


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_schedule_shapes_every_leaf(name):
  # Without weight decay each step is η_t times a direction that does not
  # depend on η, so the scheduled run is the constant run scaled by η_t / peak,
  # leaf by leaf: 0 at step 0 (the warmup), for the AdamW-routed leaves too.
  params = _params()
  scheduled = _run(FACTORIES[name](SCHEDULE), params, 6)
  constant = _run(FACTORIES[name](PEAK), params, 6)
  for step, (got, ref) in enumerate(zip(scheduled, constant)):
    factor = float(SCHEDULE(step)) / PEAK
    for path in ref:
      np.testing.assert_allclose(got[path], factor * ref[path], rtol=1e-4, atol=1e-9, err_msg=f"{path} at {step}")
  for path in AUX:
    np.testing.assert_array_equal(scheduled[0][path], 0.0)
    assert np.any(scheduled[1][path] != 0), path


@pytest.mark.parametrize(
  "name, ratio", [("muon", 3e-4 / 0.02), ("normuon", 3e-4 / 0.02), ("adamuon", 1.0), ("muon_clip", 1.0)]
)
def test_constant_rate_gives_adamw_the_documented_share(name, ratio):
  # "shape" scale: Jordan's 3e-4 for AdamW beside 0.02 for Muon, as before;
  # "rms" scale (adamuon, muon_clip): one rate for both (Liu et al. 2025).
  params = _params()
  derived = _run(FACTORIES[name](PEAK), params, 2)
  explicit = _run(FACTORIES[name](PEAK, adam_learning_rate=ratio * PEAK), params, 2)
  for got, ref in zip(derived, explicit):
    for path in ref:
      np.testing.assert_allclose(got[path], ref[path], rtol=1e-6, atol=1e-12, err_msg=path)


def test_explicit_adam_rate_or_ratio_overrides():
  params = _params()
  fixed = _run(matopt.muon(SCHEDULE, adam_learning_rate=1e-3), params, 1)[0]
  ref = _run(matopt.muon(1.0, adam_learning_rate=1e-3), params, 1)[0]
  for path in AUX:  # a constant AdamW rate moves them at the warmup's step 0
    np.testing.assert_allclose(fixed[path], ref[path], rtol=1e-6)
  np.testing.assert_array_equal(fixed["Dense_1/kernel"], 0.0)
  halved = _run(matopt.muon(PEAK, adam_lr_ratio=0.5), params, 1)[0]
  ref = _run(matopt.muon(PEAK, adam_learning_rate=0.5 * PEAK), params, 1)[0]
  for path in ref:
    np.testing.assert_allclose(halved[path], ref[path], rtol=1e-6)
  with pytest.raises(ValueError, match="not both"):
    matopt.muon(PEAK, adam_learning_rate=1e-3, adam_lr_ratio=0.5)


def test_injected_learning_rate_reaches_adamw():
  # Under inject_hyperparams the AdamW rate follows the injected value, and a
  # schedule injected as learning_rate warms every leaf up from 0.
  params = _params()
  tx = optax.inject_hyperparams(matopt.muon)(learning_rate=PEAK)
  state = tx.init(params)
  state.hyperparams["learning_rate"] = jnp.asarray(0.005)
  u, _ = jax.jit(tx.update)(_grads(params, 0), state, params)
  (ref,) = _run(matopt.muon(0.005), params, 1)
  got = {"/".join(str(e.key) for e in path): x for path, x in jax.tree_util.tree_flatten_with_path(u)[0]}
  for path in ref:
    # atol at 1e-6 of the leaf's largest entry: the injected β is a float32
    # array, so (1 − β) rounds differently from the Python float's and
    # Newton–Schulz passes that on to entries near 0 (3e-5 relative seen).
    np.testing.assert_allclose(
      got[path], ref[path], rtol=1e-5, atol=1e-6 * float(np.max(np.abs(ref[path]))), err_msg=path
    )
  warm = optax.inject_hyperparams(matopt.muon)(learning_rate=SCHEDULE)
  u, _ = jax.jit(warm.update)(_grads(params, 0), warm.init(params), params)
  for x in jax.tree.leaves(u):
    np.testing.assert_array_equal(x, 0.0)


def test_experiment_build_schedules_the_derived_adam_rate():
  # A config that gives no adam_learning_rate: the derived rate follows the
  # config's schedule through learning_rate (warmup step 0 of 4: a quarter).
  params = {"head": {"kernel": _normal((4, 3), 0)}}
  grads = {"head": {"kernel": _normal((4, 3), 1)}}
  warm = experiment_optimizers.build("muon", PEAK, {}, schedule=Schedule(warmup_steps=4), steps=10)
  flat = experiment_optimizers.build("muon", PEAK, {}, schedule=Schedule(), steps=10)
  u_warm, _ = warm.update(grads, warm.init(params), params)
  u_flat, _ = flat.update(grads, flat.init(params), params)
  np.testing.assert_allclose(u_warm["head"]["kernel"], 0.25 * u_flat["head"]["kernel"], rtol=1e-6)
  plain = matopt.muon(PEAK)
  u_plain, _ = plain.update(grads, plain.init(params), params)
  np.testing.assert_allclose(u_flat["head"]["kernel"], u_plain["head"]["kernel"], rtol=1e-6)


def _rate_options():
  for name in (
    "muon",
    "normuon",
    "adamuon",
    "muon_clip",
    "scion",
    "unconstrained_scion",
    "signum",
    "nsgd",
    "clipped_sgd",
    "shampoo",
    "soap",
  ):
    for option in inspect.signature(getattr(matopt, name)).parameters:
      if option.endswith("learning_rate"):
        yield pytest.param(name, option, id=f"{name}-{option}")


@pytest.mark.parametrize("name, option", list(_rate_options()))
def test_negative_learning_rate_is_refused(name, option):
  kwargs = {"learning_rate": 1e-3, option: -1e-3}
  with pytest.raises(ValueError, match=rf"{option} must be >= 0, got -0.001"):
    getattr(matopt, name)(**kwargs)
