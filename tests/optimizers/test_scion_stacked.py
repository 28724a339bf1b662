"""Scion on stacked vectors: each layer's bias is normalised on its own."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import matopt


@pytest.mark.parametrize("build", [matopt.scion, matopt.unconstrained_scion])
def test_stacked_bias_equals_separate_layers(build):
  keys = jax.random.split(jax.random.key(0), 4)
  # Layers with very different bias-gradient scales: one row across the stack
  # would give the small layer a tiny step; separate layers get RMS 1 each.
  scales = jnp.array([1e-3, 1.0, 30.0])[:, None]
  stacked = {"blocks": {"bias": jax.random.normal(keys[0], (3, 8))}}
  grads = {"blocks": {"bias": scales * jax.random.normal(keys[1], (3, 8))}}
  separate = {f"layer{i}": {"bias": stacked["blocks"]["bias"][i]} for i in range(3)}
  separate_grads = {f"layer{i}": {"bias": grads["blocks"]["bias"][i]} for i in range(3)}
  tx = build(0.1)
  u_stacked, _ = tx.update(grads, tx.init(stacked), stacked)
  u_separate, _ = tx.update(separate_grads, tx.init(separate), separate)
  for i in range(3):
    np.testing.assert_allclose(u_stacked["blocks"]["bias"][i], u_separate[f"layer{i}"]["bias"], rtol=1e-5, atol=1e-7)
  rms = jnp.sqrt(jnp.mean(jnp.square(u_stacked["blocks"]["bias"] - (0.0 if build is matopt.unconstrained_scion else -0.1 * stacked["blocks"]["bias"])), axis=1))
  assert float(rms.max() / rms.min()) < 1.01
