"""Strict test environment: 8 CPU devices, strict rank promotion, and strict
dtype promotion for matopt's own math (linalg, transforms).

Optimizer tests run with standard dtype promotion because optax's own
transforms (e.g. ``scale_by_adam``'s bias correction) are not strict-clean.
"""

import os
import tempfile

# Must be set before jax is imported anywhere (XLA reads it at backend start).
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Many tests compile the same programs (one optimizer on the same tree in
# several tests): a compilation cache fresh for each run (shared by the xdist
# workers and notebook kernels, which inherit the environment) reuses the
# executables instead of compiling them again, which changes no result.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="matopt-test-jax-cache-")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import pathlib  # noqa: E402
import shutil  # noqa: E402

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


def pytest_sessionfinish(session):
  # The controller made the compilation cache for this run; it removes it
  # (xdist workers finish first and have a ``workerinput``).
  cache = os.environ.get("JAX_COMPILATION_CACHE_DIR", "")
  if not hasattr(session.config, "workerinput") and os.path.basename(cache).startswith("matopt-test-jax-cache-"):
    shutil.rmtree(cache, ignore_errors=True)
