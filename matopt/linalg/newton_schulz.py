"""The matrix sign (polar factor) by Newton–Schulz iteration, and by SVD."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike, DTypeLike

from matopt.linalg.coefficients import Schedule, resolve_schedule

_METHODS = ("newton_schulz", "gram", "svd")


def compute_dtype_for(dtype: DTypeLike, compute_dtype: DTypeLike | None) -> jnp.dtype:
  """The dtype the iteration runs in: float32 for half precision inputs."""
  if compute_dtype is not None:
    return jnp.dtype(compute_dtype)
  dtype = jnp.dtype(dtype)
  if not jnp.issubdtype(dtype, jnp.floating) or jnp.finfo(dtype).bits < 32:
    return jnp.dtype(jnp.float32)
  return dtype


def scaled_frobenius(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Returns ``(x / s, ‖x‖_F / s)`` per matrix with ``s = max|x|`` (or 1 at 0).

  Dividing by the largest entry first keeps the squares inside the float
  range for entries anywhere from 1e-30 to 1e30 (a plain ``sum(x**2)``
  overflows above ~1e19 and underflows below ~1e-19 in float32).
  """
  peak = jnp.max(jnp.abs(x), axis=(-2, -1), keepdims=True)
  peak = jnp.where(peak > 0, peak, jnp.ones_like(peak))
  y = x / peak
  return y, jnp.sqrt(jnp.sum(y * y, axis=(-2, -1), keepdims=True))


def _newton_schulz_wide(x: jax.Array, schedule: jax.Array) -> jax.Array:
  """Runs the quintic iteration on ``x`` of shape ``(..., m, n)``, m <= n."""

  def step(x, abc):
    a, b, c = abc[0], abc[1], abc[2]
    gram = x @ jnp.swapaxes(x, -1, -2)  # (m, m): the small side
    poly = b * gram + c * (gram @ gram)
    return a * x + poly @ x, None

  # lax.scan keeps one step in the graph whatever the step count, so long
  # schedules on large stacks do not blow up compile time or memory.
  x, _ = jax.lax.scan(step, x, schedule)
  return x


# Steps between restarts of the Gram iteration (see _newton_schulz_gram).
GRAM_RESTART_EVERY = 2


def _gram_segment(x: jax.Array, schedule: jax.Array) -> jax.Array:
  gram = x @ jnp.swapaxes(x, -1, -2)
  eye = jnp.broadcast_to(jnp.eye(x.shape[-2], dtype=x.dtype), gram.shape)

  def poly(a_k, abc):
    return abc[0] * eye + abc[1] * a_k + abc[2] * (a_k @ a_k)

  def step(carry, abc):
    a_k, p = carry
    q = poly(a_k, abc)
    # Q A Q rather than Q² A: the same in exact arithmetic, and symmetric in
    # floating point, so round-off does not build an antisymmetric part.
    return (q @ a_k @ q, q @ p), None

  # The last step needs only its Q: the Gram matrix after it is never used.
  (a_k, p), _ = jax.lax.scan(step, (gram, eye), schedule[:-1])
  return (poly(a_k, schedule[-1]) @ p) @ x


def _newton_schulz_gram(x: jax.Array, schedule: jax.Array) -> jax.Array:
  r"""The same iteration in the small Gram space, for ``x`` of shape ``(..., m, n)``, m <= n.

  Each step multiplies by :math:`Q_k = aI + bA_k + cA_k^2` with
  :math:`A_k = X_k X_k^\top`. :math:`Q_k` is a polynomial in :math:`A_k`, so
  they commute: :math:`A_{k+1} = Q_k A_k Q_k` and :math:`X_K = (Q_K \cdots
  Q_1) X_0`. A step is m×m work (4m³ flops against 4m²n + 2m³ for the plain
  iteration); ``x`` is multiplied only when a segment starts and ends.

  The Gram matrix squares the condition number, and carrying :math:`A_k`
  across steps lets its round-off grow: in float32 at κ = 1000, eight Polar
  Express steps without restarts end 30× further from UVᵀ than the plain
  iteration. Restarting every ``GRAM_RESTART_EVERY`` = 2 steps
  (:math:`X \leftarrow PX`, :math:`A \leftarrow XX^\top`) brings the error
  back to the plain iteration's (measured: within 1.1× on 64×256, 96×384
  and 128×128 at κ = 10²…3·10³).
  """
  k = schedule.shape[0]
  for start in range(0, k, GRAM_RESTART_EVERY):
    x = _gram_segment(x, schedule[start:start + GRAM_RESTART_EVERY])
  return x


def _msign_svd(x: jax.Array) -> jax.Array:
  u, s, vh = jnp.linalg.svd(x, full_matrices=False)
  # Singular values at round-off level are zeros of a rank-deficient matrix:
  # their sign is 0, so msign(0) == 0 and msign of rank-r input has rank r.
  tol = jnp.max(s, axis=-1, keepdims=True) * max(x.shape[-2:]) * jnp.finfo(x.dtype).eps
  keep = (s > tol).astype(x.dtype)
  return u @ (keep[..., :, None] * vh)


def msign(
    x: ArrayLike,
    *,
    coeffs: str | ArrayLike = "jordan",
    steps: int | None = None,
    method: str = "newton_schulz",
    eps: float = 1e-7,
    compute_dtype: DTypeLike | None = None,
) -> jax.Array:
  r"""Matrix sign (orthogonal polar factor) of the last two axes of ``x``.

  For ``X = U Σ Vᵀ`` (reduced SVD), ``msign(X) = U Vᵀ``. Newton–Schulz
  approximates it with matmuls only:

  .. math::
    X_0 = \frac{X}{\lambda \|X\|_F + \epsilon}, \qquad
    X_{t+1} = a_t X_t + b_t (X_t X_t^\top) X_t + c_t (X_t X_t^\top)^2 X_t,

  which maps every singular value by the odd polynomial
  :math:`\sigma \mapsto a_t\sigma + b_t\sigma^3 + c_t\sigma^5` and leaves the
  singular vectors alone. Tall matrices are transposed so the Gram matrix
  is always the small side; leading axes are a batch.

  Singular values reached (measured in float32 on random 256×1024 inputs with
  singular values geomspace(1, 1/κ) by ``benchmarks/msign_bands.py``; the
  exact answer is 1):

  ==================  ======  ====================  ====================
  preset              steps   κ = 10                κ = 1000
  ==================  ======  ====================  ====================
  ``"jordan"``        5       [0.68, 1.13]          [0.11, 1.20]
  ``"polar_express"`` 8       [0.999999, 1.000001]  [0.93, 1.000001]
  ``"cubic"``         12      [0.97, 1.0]           [0.03, 1.0]
  ==================  ======  ====================  ====================

  Jordan's quintic trades convergence for speed: it never settles at 1 but
  pushes small singular values up fastest; Polar Express is minimax-optimal
  per step; the cubic converges to 1 but slowly for small σ.

  Args:
    x: array of shape ``(..., m, n)``.
    coeffs: ``"jordan"`` (3.4445, −4.7750, 2.0315; Jordan et al. 2024),
      ``"polar_express"`` (Amsel et al. 2025, Algorithm 1, with its 1.01
      safety factor), ``"cubic"`` (1.5, −0.5, 0; classical, convergent) or an
      explicit ``(k, 3)`` array of ``(a, b, c)`` per step.
    steps: iterations; ``None`` takes the preset's default (5, 8, 12; ``k``
      for an array). Longer schedules repeat their last row.
    method: ``"newton_schulz"``, ``"gram"`` (the same polynomial iteration
      run on the m×m Gram matrix; fewer FLOPs for wide or tall matrices, but
      measured only ~0.9× the plain time at 1:4 and slower on square ones on
      a 2-core CPU, see ``benchmarks/msign.py``) or
      ``"svd"`` (exact reference, slow). The
      SVD treats singular values below ``max(m, n) · eps(dtype) · σ_max`` as
      zero (the usual numerical-rank tolerance; about 1.2e-4 σ_max for a
      float32 256×1024 matrix), so at condition numbers beyond ~1/that it
      returns the polar factor of the numerical-rank part only.
    eps: added to the normalising norm (``msign(0) == 0`` exactly).
    compute_dtype: dtype of the iteration; default float32 for bf16/f16
      inputs and the input's dtype otherwise. The output has ``x``'s dtype.

  Returns:
    The polar factor, same shape and dtype as ``x``.

  Raises:
    ValueError: for ``ndim < 2``, an unknown method or coefficient preset,
      bad coefficients or a bad ``steps``.

  References:
    Jordan et al., 2024. Muon: An optimizer for hidden layers in neural
    networks. https://kellerjordan.github.io/posts/muon/

    Amsel, Persson, Musco, Gower, 2025. The Polar Express: Optimal Matrix
    Sign Methods and Their Application to the Muon Algorithm. arXiv:2505.16932

    Higham, 2008. Functions of Matrices: Theory and Computation, ch. 8.
  """
  if method not in _METHODS:
    raise ValueError(f"Unknown msign method {method!r}; valid methods are {_METHODS}.")
  schedule = resolve_schedule(coeffs, steps)
  x = jnp.asarray(x)
  if x.ndim < 2:
    raise ValueError(
        f"msign needs an array with at least 2 axes (..., m, n), got shape"
        f" {x.shape}; view vectors as (1, n) matrices explicitly if intended."
    )
  return _msign(x, schedule, method, eps, compute_dtype_for(x.dtype, compute_dtype))


def _msign(
    x: jax.Array,
    schedule: Schedule,
    method: str,
    eps: float,
    dtype: jnp.dtype,
) -> jax.Array:
  """:func:`msign` after validation (for callers that validated already)."""
  out_dtype = x.dtype
  y = x.astype(dtype)
  if method == "svd":
    return _msign_svd(y).astype(out_dtype)
  tall = y.shape[-2] > y.shape[-1]
  if tall:
    y = jnp.swapaxes(y, -1, -2)
  y, fro = scaled_frobenius(y)
  y = y / (schedule.norm_scale * fro + eps)
  iterate = _newton_schulz_gram if method == "gram" else _newton_schulz_wide
  y = iterate(y, jnp.asarray(schedule.coeffs, dtype=dtype))
  if tall:
    y = jnp.swapaxes(y, -1, -2)
  return y.astype(out_dtype)
