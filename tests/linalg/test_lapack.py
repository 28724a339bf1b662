"""One matrix per CPU LAPACK call: same results as the batched jnp calls, and
no batched eigh / QR / SVD kernel left in compiled optimizer steps (batched
ones can deadlock jaxlib's CPU thread pool; see matopt/linalg/lapack.py)."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import matopt
from matopt.linalg import lapack


def _batch(shape, seed=0):
  return jax.random.normal(jax.random.key(seed), shape)


def _sym(shape, seed=0):
  x = _batch(shape, seed)
  return x @ jnp.swapaxes(x, -1, -2)


@pytest.mark.parametrize("batch", [(), (3,), (2, 3), (20,)])  # inline, unrolled, nested, lax.map
def test_eigh_matches_batched_numpy(batch):
  a = _sym(batch + (12, 12), seed=len(batch))
  w, q = lapack.eigh(a)
  w_ref = np.linalg.eigvalsh(np.asarray(a, np.float64))
  np.testing.assert_allclose(w, w_ref, rtol=1e-4, atol=1e-3)
  # Eigenvectors up to sign: Q diag(w) Qᵀ reproduces a.
  np.testing.assert_allclose(q * w[..., None, :] @ jnp.swapaxes(q, -1, -2), a, rtol=1e-3, atol=1e-3)
  np.testing.assert_allclose(lapack.eigvalsh(a), w_ref, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("shape", [(5, 9, 4), (2, 3, 4, 9), (17, 6, 6)])
def test_qr_and_svd_match_numpy(shape):
  x = _batch(shape, seed=1)
  q, r = lapack.qr(x)
  np.testing.assert_allclose(q @ r, x, rtol=1e-4, atol=1e-4)
  assert q.shape == jnp.linalg.qr(x)[0].shape and r.shape == jnp.linalg.qr(x)[1].shape
  u, s, vh = lapack.svd(x)
  np.testing.assert_allclose(s, np.linalg.svd(np.asarray(x, np.float64), compute_uv=False), rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose((u * s[..., None, :]) @ vh, x, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(lapack.svdvals(x), s, rtol=1e-5, atol=1e-5)


def _batched_lapack_calls(compiled):
  """Result shapes of LAPACK custom calls that take more than one matrix."""
  batched = []
  for line in compiled.as_text().splitlines():
    if re.search(r'custom_call_target="lapack_[sd](syevd|geqrf|gesdd|gesvd)_ffi"', line):
      dims = [int(d) for d in re.search(r"f(?:32|64)\[([0-9,]+)\]", line).group(1).split(",")]
      if len(dims) > 2 and np.prod(dims[:-2]) > 1:
        batched.append(dims)
  return batched


@pytest.mark.parametrize(
  "make",
  [
    lambda: matopt.shampoo(1e-3, precondition_every=1),
    lambda: matopt.scale_by_shampoo(precondition_every=1, root_method="eigh"),
    lambda: matopt.soap(3e-3, precondition_every=1),
  ],
  ids=["shampoo", "scale_by_shampoo_eigh", "soap"],
)
def test_optimizer_steps_issue_no_batched_lapack(make):
  # Several same-shape matrices (stacked by the transforms) in several shape
  # groups: the tree on which a single-device Shampoo step used to hang.
  params = {f"w{i}": jnp.ones((48, 32)) for i in range(3)} | {f"v{i}": jnp.ones((32, 96)) for i in range(2)}
  tx = make()
  compiled = jax.jit(tx.update).lower(params, tx.init(params), params).compile()
  assert "lapack_ssyevd_ffi" in compiled.as_text()  # the roots / bases are there, one matrix per call
  assert _batched_lapack_calls(compiled) == []
