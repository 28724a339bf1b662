"""Strict test environment: 8 CPU devices, strict rank promotion, and strict
dtype promotion for matopt's own math (linalg, transforms).

Optimizer tests run with standard dtype promotion because optax's own
transforms (e.g. ``scale_by_adam``'s bias correction) are not strict-clean.
"""

import os

# Must be set before jax is imported anywhere (XLA reads it at backend start).
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pathlib  # noqa: E402

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")

_STRICT_DIRS = ("linalg", "transforms")


@pytest.fixture(autouse=True)
def _strict_environment(request):
  assert jax.device_count() == 8, "tests expect 8 host devices (XLA_FLAGS)"
  parts = pathlib.Path(str(request.node.path)).parts
  mode = "strict" if any(d in parts for d in _STRICT_DIRS) else "standard"
  with jax.numpy_dtype_promotion(mode):
    yield
