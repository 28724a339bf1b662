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
  rms = jnp.sqrt(
    jnp.mean(
      jnp.square(
        u_stacked["blocks"]["bias"] - (0.0 if build is matopt.unconstrained_scion else -0.1 * stacked["blocks"]["bias"])
      ),
      axis=1,
    )
  )
  assert float(rms.max() / rms.min()) < 1.01


@pytest.mark.parametrize("build", [matopt.scion, matopt.unconstrained_scion])
def test_stacked_hidden_layers_take_dimension_numbers(build):
  # A scanned stack (L, d_in, d_out) is ambiguous without dimension_numbers
  # (views.infer_dimension_numbers refuses to guess); Scion must take them
  # like every other matrix optimizer, and then each layer steps on its own.
  keys = jax.random.split(jax.random.key(1), 2)
  stacked = {"blocks": {"kernel": jax.random.normal(keys[0], (3, 6, 4))}}
  grads = {"blocks": {"kernel": jax.random.normal(keys[1], (3, 6, 4))}}
  separate = {f"layer{i}": {"kernel": stacked["blocks"]["kernel"][i]} for i in range(3)}
  separate_grads = {f"layer{i}": {"kernel": grads["blocks"]["kernel"][i]} for i in range(3)}
  with pytest.raises(ValueError, match="dimension_numbers"):
    tx = build(0.1)
    tx.update(grads, tx.init(stacked), stacked)
  tx = build(0.1, dimension_numbers={"blocks": {"kernel": matopt.DimensionNumbers(reduction_axis=1, output_axis=2)}})
  u_stacked, _ = tx.update(grads, tx.init(stacked), stacked)
  tx = build(0.1)
  u_separate, _ = tx.update(separate_grads, tx.init(separate), separate)
  for i in range(3):
    np.testing.assert_allclose(
      u_stacked["blocks"]["kernel"][i], u_separate[f"layer{i}"]["kernel"], rtol=1e-5, atol=1e-6
    )
