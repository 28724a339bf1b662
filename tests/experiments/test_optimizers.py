"""The config's optimizer catalogue: options from signatures, schedules on every learning rate."""

import dataclasses
import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from matopt.experiments import optimizers
from matopt.experiments.config import ConfigError, Schedule, matches
from matopt.optimizers.registry import OPTIMIZERS


@pytest.mark.parametrize(
  "schedule, want",
  [
    (Schedule(), {0: 1.0, 50: 1.0, 99: 1.0}),
    (Schedule(warmup_steps=10, decay="linear", final_fraction=0.1), {0: 0.1, 4: 0.5, 10: 1.0, 55: 0.55, 100: 0.1}),
    (Schedule(warmup_steps=0, decay="cosine", final_fraction=0.0), {0: 1.0, 50: 0.5, 100: 0.0}),
  ],
)
def test_multiplier(schedule, want):
  fn = optimizers.multiplier(schedule, 100)
  for step, value in want.items():
    np.testing.assert_allclose(float(fn(jnp.asarray(step))), value, atol=1e-6, err_msg=f"step {step}")


def _hand_written(schedule, steps):
  """The multiplier matopt computed by hand before it used optax's schedules (float32, as then)."""
  warmup, final = schedule.warmup_steps, schedule.final_fraction

  def fn(step):
    step = jnp.asarray(step, jnp.float32)
    frac = jnp.clip((step - warmup) / max(steps - warmup, 1), 0.0, 1.0)
    if schedule.decay == "linear":
      decay = 1.0 - (1.0 - final) * frac
    elif schedule.decay == "cosine":
      decay = final + (1.0 - final) * 0.5 * (1.0 + jnp.cos(jnp.pi * frac))
    else:
      decay = jnp.ones_like(frac)
    return jnp.where(step < warmup, (step + 1) / warmup, decay) if warmup else decay

  return fn


@pytest.mark.parametrize("decay", ["constant", "linear", "cosine"])
@pytest.mark.parametrize("warmup", [0, 1, 20, 200])
@pytest.mark.parametrize("final", [0.0, 0.1])
@pytest.mark.parametrize("steps", [1, 8, 400, 5000])
def test_optax_schedule_is_the_hand_written_one_at_every_step(decay, warmup, final, steps):
  # The shipped configs' schedules (quickstart: warmup 20, linear to 0.1 at
  # 400; gpt_gpu: 200, linear, 5000) and the edges: no warmup, a warmup of one
  # step, a warmup as long as the run, past the end. Equal up to float32
  # rounding (optax orders the operations differently): within 1 ulp of 1.
  schedule = Schedule(warmup, decay, final)
  count = jnp.arange(steps + 3, dtype=jnp.int32)  # optax's step counters are int32
  new = jax.vmap(optimizers.multiplier(schedule, steps))(count)
  old = jax.vmap(_hand_written(schedule, steps))(count)
  assert new.dtype == old.dtype == jnp.float32
  np.testing.assert_allclose(new, old, rtol=0, atol=float(jnp.finfo(jnp.float32).eps))


@pytest.mark.parametrize("name", sorted(optimizers.CATALOGUE))
def test_every_optimizer_builds_and_steps(name):
  tx = optimizers.build(
    name, 0.01, {}, schedule=Schedule(warmup_steps=2), steps=10, model_options={"recipe": "language"}
  )
  params = {
    "embed": {"embedding": jnp.ones((5, 4))},
    "dense": {"kernel": jnp.eye(4)},
    "head": {"kernel": jnp.ones((4, 3))},
    "norm": {"scale": jnp.ones(4)},
  }
  grads = {
    "embed": {"embedding": jnp.full((5, 4), 0.1)},
    "dense": {"kernel": jnp.diag(jnp.arange(1.0, 5.0))},
    "head": {"kernel": jnp.full((4, 3), -0.2)},
    "norm": {"scale": jnp.full(4, 0.3)},
  }
  state = tx.init(params)
  # QK-clip's logits: this tree has no attention module, so none to report.
  extra = {arg: {} for arg in optimizers.CATALOGUE[name].update_args}
  for _ in range(2):
    updates, state = tx.update(grads, state, params, **extra)
  leaves = jax.tree.leaves(updates)
  assert all(bool(jnp.all(jnp.isfinite(u))) for u in leaves)
  assert any(bool(jnp.any(u != 0)) for u in leaves)


def test_catalogue_is_the_registry_plus_optax_baselines():
  assert set(optimizers.CATALOGUE) == set(OPTIMIZERS) | {"adamw", "adam", "sgd", "shampoo_gn", "soap_gn"}
  for name in ("shampoo", "soap"):  # the same optimizers, fed Gauss–Newton statistics
    assert optimizers.CATALOGUE[f"{name}_gn"].factory is OPTIMIZERS[name].factory
    assert optimizers.CATALOGUE[f"{name}_gn"].stats and not optimizers.CATALOGUE[name].stats
  for name, info in OPTIMIZERS.items():
    entry = optimizers.CATALOGUE[name]
    assert (entry.factory, entry.update_args, entry.model_options) == (
      info.factory,
      info.update_args,
      info.model_options,
    )


def _value_of(option):
  """A YAML value of the option's type: its default where YAML can write it."""
  if matches(option.default, option.type):
    return option.default
  return next(v for v in (1.0, 1, True, "x", [[1.0, 2.0]], {"hidden": 1.0}, None) if matches(v, option.type))


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_every_option_is_settable_from_yaml_or_refused_with_a_message(name):
  entry = optimizers.CATALOGUE[name]
  parameters = inspect.signature(OPTIMIZERS[name].factory).parameters
  assert set(entry.options) == set(parameters) - {"learning_rate"}
  for option in entry.options.values():
    where = f"config.optimizers[0].{option.name}"
    if option.type is not None:
      # Its default (written as YAML would) passes the type check; the factory may still refuse a value.
      assert matches(_value_of(option), option.type), option
      if matches(option.default, option.type):
        assert entry.check_options({option.name: option.default}, "config.optimizers[0]") == {
          option.name: option.default
        }
      continue
    with pytest.raises(ConfigError) as info:
      entry.check_options({option.name: "x"}, "config.optimizers[0]")
    message = str(info.value)
    assert (
      message.startswith(f"{where}: {option.name} takes ") and "a Python object that YAML cannot express" in message
    )
    assert f"build the optimizer in Python: matopt.{name}(learning_rate, {option.name}=...)." in message, message


def test_python_objects_are_refused_and_the_rest_reachable():
  muon = optimizers.CATALOGUE["muon"]
  assert {"labels", "dimension_numbers", "adaptive", "aux", "weight_decay_mask"} == set(muon.options) - set(
    muon.settable
  )
  assert {"momentum", "nesterov", "coeffs", "scale", "adam_learning_rate"} <= set(muon.settable)
  assert muon.options["adam_learning_rate"].type == float | None  # a scalar: no array form in YAML
  # An array option takes nested lists, handed over as an array: coeffs per Newton–Schulz step.
  coeffs = [[3.4445, -4.775, 2.0315]] * 5
  assert muon.check_options({"coeffs": coeffs}, "c") == {"coeffs": coeffs}
  assert isinstance(muon.kwargs({"coeffs": coeffs})["coeffs"], np.ndarray)
  with pytest.raises(ConfigError, match=r"c.momentum must be float, got list \[0.9\]"):
    muon.check_options({"momentum": [0.9]}, "c")
  # optax's baselines: every float option, not a hand list (eps_root was unreachable before).
  assert set(optimizers.CATALOGUE["adamw"].settable) == {"b1", "b2", "eps", "eps_root", "weight_decay", "nesterov"}
  assert optimizers.CATALOGUE["sgd"].settable["momentum"].type == float | None


def test_every_learning_rate_is_scheduled():
  # Muon's AdamW learning rate follows the schedule too: at warmup step 0 of
  # 4 the multiplier is 1/4, so the AdamW update is a quarter of the plain one.
  entry = optimizers.CATALOGUE["muon"]
  assert entry.rates == ("adam_learning_rate",)
  params = {"head": {"kernel": jnp.ones((4, 3))}}
  grads = {"head": {"kernel": jnp.full((4, 3), 0.5)}}
  warm = optimizers.build("muon", 0.02, {"adam_learning_rate": 0.01}, schedule=Schedule(warmup_steps=4), steps=10)
  flat = optimizers.build("muon", 0.02, {"adam_learning_rate": 0.01}, schedule=Schedule(), steps=10)
  u_warm, _ = warm.update(grads, warm.init(params), params)
  u_flat, _ = flat.update(grads, flat.init(params), params)
  np.testing.assert_allclose(u_warm["head"]["kernel"], 0.25 * u_flat["head"]["kernel"], rtol=1e-6)


def test_model_options_apply_only_where_accepted_and_options_win():
  assert optimizers.CATALOGUE["scion"].model_options == ("recipe",)
  assert optimizers.CATALOGUE["adamw"].model_options == ()
  # An explicit option beats the task's (an unknown recipe would raise).
  with pytest.raises(ValueError, match="valid recipes are"):
    optimizers.build("scion", 0.1, {"recipe": "audio"}, schedule=Schedule(), steps=1, model_options={"recipe": "image"})
  tx = optimizers.build("adamw", 0.1, {}, schedule=Schedule(), steps=1, model_options={"recipe": "image"})
  assert isinstance(tx, optax.GradientTransformation)
  assert dataclasses.asdict(Schedule())["decay"] == "constant"
