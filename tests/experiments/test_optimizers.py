"""The config's optimizer catalogue: schedules reach every learning rate."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from matopt.experiments import optimizers
from matopt.experiments.config import Schedule


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


@pytest.mark.parametrize("name", sorted(optimizers.CATALOGUE))
def test_every_optimizer_builds_and_steps(name):
  tx = optimizers.build(name, 0.01, {}, schedule=Schedule(warmup_steps=2), steps=10,
                        task_defaults={"recipe": "language"})
  params = {"embed": {"embedding": jnp.ones((5, 4))}, "dense": {"kernel": jnp.eye(4)},
            "head": {"kernel": jnp.ones((4, 3))}, "norm": {"scale": jnp.ones(4)}}
  grads = {"embed": {"embedding": jnp.full((5, 4), 0.1)}, "dense": {"kernel": jnp.diag(jnp.arange(1.0, 5.0))},
           "head": {"kernel": jnp.full((4, 3), -0.2)}, "norm": {"scale": jnp.full(4, 0.3)}}
  state = tx.init(params)
  # QK-clip's logits: this tree has no attention module, so none to report.
  extra = {"max_logits": {}} if optimizers.CATALOGUE[name].needs_max_logits else {}
  for _ in range(2):
    updates, state = tx.update(grads, state, params, **extra)
  leaves = jax.tree.leaves(updates)
  assert all(bool(jnp.all(jnp.isfinite(u))) for u in leaves)
  assert any(bool(jnp.any(u != 0)) for u in leaves)


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


def test_task_defaults_apply_only_where_accepted_and_options_win():
  assert optimizers.CATALOGUE["scion"].task_defaults == ("recipe",)
  assert optimizers.CATALOGUE["adamw"].task_defaults == ()
  # An explicit option beats the task's default (an unknown recipe would raise).
  with pytest.raises(ValueError, match="valid recipes are"):
    optimizers.build("scion", 0.1, {"recipe": "audio"}, schedule=Schedule(), steps=1,
                     task_defaults={"recipe": "image"})
  optimizers.build("adamw", 0.1, {}, schedule=Schedule(), steps=1, task_defaults={"recipe": "image"})
  assert dataclasses.asdict(Schedule())["decay"] == "constant"
