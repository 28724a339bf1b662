r"""Inverse p-th roots of symmetric PSD matrices (Shampoo's preconditioners).

Two methods, both regularised by a ridge relative to the largest eigenvalue,
``A + ε·λ_max(A)·I`` (Anil et al. 2020, scalable Shampoo), so the result does
not depend on the scale of the statistics:

* ``"eigh"``: ``Q diag((max(λ, n·u·λ_max) + ridge)^{-1/p}) Qᵀ`` from
  ``jnp.linalg.eigh`` (u the unit round-off of the compute dtype): eigenvalues
  below eigh's accuracy are raised to it, so the root is one multiple of the
  identity on the numerical null space and does not depend on round-off there. If it returns non-finite values in float32 it is retried in
  float64 when ``jax_enable_x64`` is on. In float32 its error grows with the
  condition number κ, eigh's eigenvalues being accurate to ``u·λ_max``:
  against float64, 5e-7 at κ ≈ 10 but 2e-5 to 7e-5 at κ ≈ 9e3 (ridge 1e-4 to
  1e-6), where the coupled Newton iteration of Google's distributed_shampoo
  (its ridge ε·λ_max) gets 6e-7 to 3e-6 (measured, 10×10 Gram matrices).
* ``"newton"``: the coupled Newton iteration of Guo & Higham (2006), matmuls
  only, suited to accelerators:

  .. math::
    M_0 = zA,\quad H_0 = z^{1/p} I,\quad z = \frac{1 + p}{2\|A\|_F},\qquad
    T_k = \big(1 + \tfrac1p\big) I - \tfrac1p M_k,\quad
    M_{k+1} = T_k^{\,p} M_k,\quad H_{k+1} = H_k T_k,

  with :math:`M_k \to I` and :math:`H_k \to A^{-1/p}`; it stops when
  :math:`\max|M_k - I|` is below ``tol`` or grows by 20%, and returns the
  iterate with the smallest residual.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from matopt.linalg import lapack

METHODS = ("eigh", "newton")


def _is_array(x: object) -> bool:
  # Under optax.inject_hyperparams p and eps arrive as (traced) scalar arrays.
  return isinstance(x, jax.Array) and not jnp.ndim(x)


def _check(a: jax.Array, p: object, eps: object, method: str) -> None:
  if method not in METHODS:
    raise ValueError(f"Unknown root method {method!r}; valid methods are {METHODS}.")
  if method == "newton" and _is_array(p):
    raise ValueError(
      f"method='newton' needs a static integer p, got the array {p!r}; use method='eigh'"
      " or pass p as a Python number (static_args under optax.inject_hyperparams)."
    )
  if not _is_array(p) and (isinstance(p, bool) or not isinstance(p, (int, float)) or p <= 0):
    raise ValueError(f"p must be a positive number (e.g. 4 for Shampoo's L^(-1/4)), got {p!r}.")
  if not _is_array(eps) and (isinstance(eps, bool) or not isinstance(eps, (int, float)) or eps < 0):
    raise ValueError(f"eps must be a non-negative number, got {eps!r}.")
  if a.ndim < 2 or a.shape[-1] != a.shape[-2]:
    raise ValueError(f"Expected square matrices (..., n, n), got shape {a.shape}.")


def _symmetrise(a: jax.Array) -> jax.Array:
  return 0.5 * (a + jnp.swapaxes(a, -1, -2))


def _ridge(a: jax.Array, eps: float, lam_max: jax.Array) -> jax.Array:
  # Relative ridge; the absolute floor keeps an all-zero statistic invertible
  # (its root is then a large multiple of I, applied to a zero gradient).
  tiny = jnp.finfo(a.dtype).tiny ** 0.5
  return jnp.maximum(eps * lam_max, tiny)


def _eigh_root(a: jax.Array, p: float, eps: float) -> jax.Array:
  w, q = lapack.eigh(a)
  lam_max = jnp.max(w, axis=-1, keepdims=True)
  # Eigenvalues below eigh's accuracy (n·u·λ_max, Golub & Van Loan §8.1) are
  # round-off: raised to that level they become equal, so the root acts as
  # one multiple of the identity on the numerical null space, whatever basis
  # eigh picked there, instead of amplifying round-off by up to ridge^{-1/p}.
  # In a's dtype: a Python/NumPy scalar here would promote float32 to float64 under x64 on numpy 1.x.
  noise = jnp.asarray(a.shape[-1] * jnp.finfo(a.dtype).eps, a.dtype) * lam_max
  w = jnp.maximum(w, noise) + _ridge(a, eps, lam_max)
  return (q * w[..., None, :] ** (-1.0 / p)) @ jnp.swapaxes(q, -1, -2)


def _newton_root(a: jax.Array, p: int, eps: float, max_iters: int, tol: float) -> tuple[jax.Array, jax.Array]:
  eye = jnp.broadcast_to(jnp.eye(a.shape[-1], dtype=a.dtype), a.shape)
  # λ_max ≤ ‖A‖_F; a cheap upper bound is enough for a relative ridge.
  fro = jnp.sqrt(jnp.sum(a * a, axis=(-2, -1), keepdims=True))
  a = a + _ridge(a, eps, fro) * eye
  fro = jnp.sqrt(jnp.sum(a * a, axis=(-2, -1), keepdims=True))
  z = (1.0 + p) / (2.0 * fro)
  m0 = z * a
  h0 = z ** (1.0 / p) * eye
  err0 = jnp.max(jnp.abs(m0 - eye), axis=(-2, -1))

  def cond(carry):
    i, _, _, _, best, err, prev = carry
    # Stop at tolerance, or once the residual grows by 20% (round-off has
    # taken over: Anil et al. 2020 use the same divergence guard).
    return (i < max_iters) & jnp.any((best > tol) & (err < 1.2 * prev))

  def body(carry):
    i, m, h, best_h, best, err, _ = carry
    t = (1.0 + 1.0 / p) * eye - m / p
    m = jnp.linalg.matrix_power(t, p) @ m
    h = h @ t
    new_err = jnp.max(jnp.abs(m - eye), axis=(-2, -1))
    better = new_err < best
    best_h = jnp.where(better[..., None, None], h, best_h)
    return i + 1, m, h, best_h, jnp.minimum(new_err, best), new_err, err

  init = (0, m0, h0, h0, err0, err0, jnp.full_like(err0, jnp.inf))
  _, _, _, h, err, _, _ = jax.lax.while_loop(cond, body, init)
  return h, err


def inverse_pth_root(
  a: ArrayLike,
  p: int | float = 4,
  *,
  eps: float = 1e-6,
  method: str = "eigh",
  max_iters: int = 100,
  tol: float = 1e-6,
) -> jax.Array:
  r"""``(A + ε λ_max I)^{-1/p}`` for symmetric PSD ``A`` (last two axes).

  Args:
    a: symmetric PSD matrices ``(..., n, n)``; symmetrised before use.
    p: the root (4 for Shampoo's :math:`L^{-1/4}`); ``"newton"`` needs an int.
    eps: ridge relative to the largest eigenvalue (to ‖A‖_F for
      ``"newton"``, a cheap upper bound of it).
    method: ``"eigh"`` or ``"newton"`` (see the module docstring).
    max_iters: iteration cap for ``"newton"``.
    tol: target ``max|M − I|`` for ``"newton"``.

  Returns:
    The inverse root, same shape; computed in at least float32 and returned
    in ``a``'s dtype.

  References:
    Guo and Higham, 2006. A Schur–Newton method for the matrix p-th root and
    its inverse. SIAM J. Matrix Anal. Appl. 28(3).

    Anil, Gupta, Koren, Regan, Singer, 2020. Scalable Second Order
    Optimization for Deep Learning. arXiv:2002.09018
  """
  a = jnp.asarray(a)
  _check(a, p, eps, method)
  out_dtype = a.dtype
  x = _symmetrise(a.astype(jnp.promote_types(a.dtype, jnp.float32)))
  if method == "newton":
    if int(p) != p:
      raise ValueError(f"method='newton' needs an integer p, got {p!r}; use method='eigh'.")
    return _newton_root(x, int(p), eps, max_iters, tol)[0].astype(out_dtype)
  root = _eigh_root(x, p, eps)
  if jax.config.jax_enable_x64 and x.dtype == jnp.float32:
    # DistributedShampoo's fallback: retry eigh in float64 when float32 fails.
    ok = jnp.all(jnp.isfinite(root))
    root = jax.lax.cond(ok, lambda: root, lambda: _eigh_root(x.astype(jnp.float64), p, eps).astype(jnp.float32))
  return root.astype(out_dtype)


def root_error(a: ArrayLike, root: ArrayLike, p: int | float, eps: float = 1e-6) -> jax.Array:
  r"""Relative residual ``‖root^{-p} − (A + ridge)‖_F / ‖A + ridge‖_F`` via eigh.

  Used by Shampoo's failure guard: a root whose error is large or non-finite
  is rejected and the previous preconditioner kept.
  """
  a = _symmetrise(jnp.asarray(a, jnp.promote_types(jnp.result_type(a), jnp.float32)))
  root = _symmetrise(jnp.asarray(root, a.dtype))
  w, q = lapack.eigh(root)
  inv_pow = (q * jnp.where(w > 0, w, jnp.inf)[..., None, :] ** (-float(p))) @ jnp.swapaxes(q, -1, -2)
  lam_max = jnp.max(lapack.eigvalsh(a), axis=-1)[..., None, None]
  target = a + _ridge(a, eps, lam_max) * jnp.broadcast_to(jnp.eye(a.shape[-1], dtype=a.dtype), a.shape)
  num = jnp.linalg.norm(inv_pow - target, axis=(-2, -1))
  return num / jnp.linalg.norm(target, axis=(-2, -1))
