"""Strict test environment: 8 CPU devices, strict dtype and rank promotion."""

import os

# Must be set before jax is imported anywhere (XLA reads it at backend start).
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture(autouse=True)
def _check_devices():
  assert jax.device_count() == 8, "tests expect 8 host devices (XLA_FLAGS)"
