"""The matrix sign (polar factor) by Newton–Schulz iteration, and by SVD."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike, DTypeLike

from matopt import _checks
from matopt.linalg import lapack
from matopt.linalg.coefficients import Schedule, resolve_schedule
from matopt.linalg.safe_norms import scaled_l2

# How msign computes UVᵀ; every caller (msign, the spectral LMO,
# scale_by_msign, scale_by_lmo) checks and resolves it here.
METHODS = ("newton_schulz", "gram", "auto", "svd")


def check_method(method: object) -> str:
  """Returns ``method`` if it is one of :data:`METHODS`, else raises a ValueError."""
  if not isinstance(method, str) or method not in METHODS:
    raise ValueError(f"Unknown msign method {method!r}; valid methods are {METHODS}.")
  return method


def compute_dtype_for(dtype: DTypeLike, compute_dtype: DTypeLike | None) -> jnp.dtype:
  """The dtype the iteration runs in: float32 for half precision inputs."""
  if compute_dtype is not None:
    return jnp.dtype(compute_dtype)
  dtype = jnp.dtype(dtype)
  if not jnp.issubdtype(dtype, jnp.floating) or jnp.finfo(dtype).bits < 32:
    return jnp.dtype(jnp.float32)
  return dtype


def _normalise(x: jax.Array, norm_scale: float, eps: float) -> jax.Array:
  r"""``x / (λ‖x‖_F + ε)`` per matrix, overflow-safe: Newton–Schulz's start.

  As Jordan's ``X / (X.norm() + 1e-7)``. Written as ``y / (λ‖y‖_F + ε/s)`` with
  ``y = x / s``, ``s = max|x|``, it is the same number without squaring
  ``x``, so entries from 1e-30 to 1e30 neither overflow nor underflow. At
  ``x = 0`` it returns 0, also for ``eps = 0``.
  """
  y, fro, peak = scaled_l2(x, axis=(-2, -1))
  denom = norm_scale * fro + eps / peak
  # Zero only for x == 0 with eps == 0, where y is 0: any divisor gives 0.
  return y / jnp.where(denom > 0, denom, jnp.ones_like(denom))


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
# Schedules whose own scalar map ends farther than this from 1 on [0.01, 1]
# run the Gram iteration without restarts (see _gram_restart_every).
GRAM_LOOSE_BAND = 1e-2


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


# method="auto" takes the Gram iteration where it needs at most this fraction
# of the plain iteration's FLOPs: its m×m products run a little below the
# rate of the plain m×n ones, so a small FLOP saving is not a time saving.
GRAM_AUTO_RATIO = 0.75


def gram_flop_ratio(m: int, n: int, steps: int, restart_every: int) -> float:
  """FLOPs of the Gram iteration over the plain one for an ``m×n`` (m ≤ n) matrix.

  Plain: per step ``XXᵀ``, ``A²`` and ``BX``: 4m²n + 2m³. Gram, per segment
  of r steps: ``XXᵀ`` and the final ``PX`` (4m²n), r − 1 steps of ``A²``,
  ``QAQ`` and ``QP`` (8m³ each) and the last ``Q`` and ``QP`` (4m³).
  """
  plain = steps * (4 * m * m * n + 2 * m**3)
  gram = 0
  for start in range(0, steps, restart_every):
    r = min(restart_every, steps - start)
    gram += 4 * m * m * n + 8 * (r - 1) * m**3 + 4 * m**3
  return gram / plain


def _band(schedule: Schedule) -> float:
  """Largest ``|p(σ) − 1|`` of the schedule's composed scalar map on [0.01, 1]."""
  sigma = np.geomspace(1e-2, 1.0, 2001) / schedule.norm_scale
  for a, b, c in schedule.coeffs:
    sigma = a * sigma + b * sigma**3 + c * sigma**5
  return float(np.max(np.abs(sigma - 1.0)))


def _gram_restart_every(schedule: Schedule) -> int:
  """Restarts only pay where the schedule converges tightly.

  Jordan's quintic ends in a band ±0.3 around 1 and the default cubic ±0.1:
  the Gram iteration's float32 round-off is far below that, and without
  restarts it matches the plain iteration's distance to UVᵀ (tested at
  κ = 10 and 10³) with one multiplication by X at each end, about half the
  plain iteration's FLOPs at 1:4 aspect. Its distance to the polynomial
  itself grows to 1e-4…2e-4 at κ = 10³ (plain: 3e-6; see :func:`msign`).
  Polar Express converges to 1 and needs the restarts.
  """
  return schedule.coeffs.shape[0] if _band(schedule) > GRAM_LOOSE_BAND else GRAM_RESTART_EVERY


def _newton_schulz_gram(x: jax.Array, schedule: jax.Array, restart_every: int = GRAM_RESTART_EVERY) -> jax.Array:
  r"""The same iteration in the small Gram space, for ``x`` of shape ``(..., m, n)``, m <= n.

  Each step multiplies by :math:`Q_k = aI + bA_k + cA_k^2` with
  :math:`A_k = X_k X_k^\top`. :math:`Q_k` is a polynomial in :math:`A_k`, so
  they commute: :math:`A_{k+1} = Q_k A_k Q_k` and :math:`X_K = (Q_K \cdots
  Q_1) X_0`. A step is m×m work (4m³ flops against 4m²n + 2m³ for the plain
  iteration); ``x`` is multiplied only when a segment starts and ends.

  The Gram matrix squares the condition number, and carrying :math:`A_k`
  across steps lets its round-off grow: in float32 at κ = 1000, eight Polar
  Express steps without restarts end 30× further from UVᵀ than the plain
  iteration. For such tightly converging schedules (see
  :func:`_gram_restart_every`), restarting every ``GRAM_RESTART_EVERY`` = 2 steps
  (:math:`X \leftarrow PX`, :math:`A \leftarrow XX^\top`) brings the error
  back to the plain iteration's (measured: within 1.1× on 64×256, 96×384
  and 128×128 at κ = 10²…3·10³).
  """
  k = schedule.shape[0]
  for start in range(0, k, restart_every):
    x = _gram_segment(x, schedule[start : start + restart_every])
  return x


def _msign_svd(x: jax.Array) -> jax.Array:
  u, s, vh = lapack.svd(x)
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

  ===================  ======  ====================  ====================
  preset               steps   κ = 10                κ = 1000
  ===================  ======  ====================  ====================
  ``"jordan"``         5       [0.68, 1.13]          [0.11, 1.20]
  ``"polar_express"``  8       [0.999999, 1.000001]  [0.93, 1.000001]
  ``"cubic"``          12      [0.97, 1.0]           [0.03, 1.0]
  ===================  ======  ====================  ====================

  Jordan's quintic trades convergence for speed: it never settles at 1 but
  pushes small singular values up fastest; Polar Express is minimax-optimal
  per step; the cubic converges to 1 but slowly for small σ.

  Args:
    x: array of shape ``(..., m, n)``.
    coeffs: a name in :data:`matopt.linalg.PRESETS` (built in:
      ``"jordan"``: 3.4445, −4.7750, 2.0315, Jordan et al. 2024;
      ``"polar_express"``: Amsel et al. 2025, Algorithm 1, with its 1.01
      safety factor; ``"cubic"``: 1.5, −0.5, 0, classical, convergent; more
      with :func:`matopt.linalg.register_preset`) or an explicit ``(k, 3)``
      array of ``(a, b, c)`` per step.
    steps: iterations; ``None`` takes the preset's default (5, 8, 12; ``k``
      for an array). Longer schedules repeat their last row.
    method: ``"newton_schulz"`` (default: the plain iteration, the
      formula above evaluated as written, at float32 parity with Jordan's
      and optax's functions; the transforms :func:`matopt.scale_by_msign`
      and :func:`matopt.scale_by_lmo` default to ``"auto"`` for speed),
      ``"gram"`` (the same polynomial iteration
      run on the m×m Gram matrix; fewer FLOPs for wide or tall matrices,
      more for square ones: ``matopt.linalg.newton_schulz.gram_flop_ratio``; restarted every 2
      steps only for schedules that converge tightly, such as Polar
      Express). Its distance to UVᵀ is the plain iteration's, but without
      restarts (Jordan's schedule) it strays further from the polynomial
      the plain one evaluates. Relative Frobenius distance to that
      polynomial evaluated in float64, both in float32 on 64×256, 96×384
      and 128×128 inputs: 1e-6…2e-6 for both at κ = 10; 5e-5…7e-5 (plain:
      1e-6…2e-6) at κ = 1e2; 1e-4…2e-4 (plain: 2e-6…3e-6) at κ = 1e3;
      with restarts (Polar Express) both 1e-6…8e-6. Far below Jordan's own
      bf16 round-off (3e-2…1e-1), but above float32 parity with his
      function. ``"auto"`` (the Gram
      iteration where it needs ≤ 0.75 of the plain FLOPs, e.g. Jordan's
      5 steps at aspect 1:3 or beyond; the plain one otherwise) or ``"svd"``
      (exact reference, slow). The
      SVD treats singular values below ``max(m, n) · eps(dtype) · σ_max`` as
      zero (the usual numerical-rank tolerance; about 1.2e-4 σ_max for a
      float32 256×1024 matrix), so at condition numbers beyond ~1/that it
      returns the polar factor of the numerical-rank part only.
    eps: ε in :math:`X_0 = X / (\lambda\|X\|_F + \epsilon)` (λ = 1, or
      Polar Express's 1.01), exactly as Jordan's ``X / (X.norm() + 1e-7)``
      (``tests/parity/test_muon_family.py`` matches his function, run in
      float64, to 7e-6 of the largest entry at every ‖X‖_F from 1 to
      1e-8); timm and pytorch_optimizer divide by
      :math:`\max(\|X\|_F, \epsilon)` instead, ``eps=0`` here wherever
      ‖X‖_F ≥ ε (matched to 4e-6 at 1 and 1e-4). The result is therefore
      not scale invariant where ‖X‖_F nears ε: against ``eps=0`` it
      differs (relative Frobenius, 64×256, Jordan's coefficients) by
      1.6e-5 at ‖X‖_F = 1e-2, 1.5e-3 at 1e-4, 1.5e-2 at 1e-5 and 0.14 at
      1e-6, and it goes to 0 with X (``msign(0) == 0`` exactly). ``eps=0``
      gives exact scale invariance: the same result (to round-off) for X
      at 1e-30 and at 1e30, never a NaN (the norm is taken after dividing
      by max|X|), and still ``msign(0) == 0``.
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
  check_method(method)
  schedule = resolve_schedule(coeffs, steps)
  _checks.check_range("eps", eps, 0.0, float("inf"))
  x = jnp.asarray(x)
  if x.ndim < 2:
    raise ValueError(
      f"msign needs an array with at least 2 axes (..., m, n), got shape"
      f" {x.shape}; view vectors as (1, n) matrices explicitly if intended."
    )
  return _msign(x, schedule, method, eps, compute_dtype_for(x.dtype, compute_dtype))


def resolve_method(method: str, schedule: Schedule, m: int, n: int) -> str:
  """The iteration ``method`` runs on an ``m×n`` matrix: ``"auto"`` becomes ``"gram"`` or ``"newton_schulz"``.

  ``"auto"`` takes the Gram iteration where it needs at most
  ``GRAM_AUTO_RATIO`` of the plain iteration's FLOPs
  (``matopt.linalg.newton_schulz.gram_flop_ratio``, with the schedule's restart policy); other
  methods are returned as given.
  """
  if method != "auto":
    return method
  m, n = min(m, n), max(m, n)
  ratio = gram_flop_ratio(m, n, len(schedule.coeffs), _gram_restart_every(schedule))
  return "gram" if ratio <= GRAM_AUTO_RATIO else "newton_schulz"


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
  method = resolve_method(method, schedule, *y.shape[-2:])
  if method == "svd":
    return _msign_svd(y).astype(out_dtype)
  tall = y.shape[-2] > y.shape[-1]
  if tall:
    y = jnp.swapaxes(y, -1, -2)
  y = _normalise(y, schedule.norm_scale, eps)
  coeffs = jnp.asarray(schedule.coeffs, dtype=dtype)
  if method == "gram":
    y = _newton_schulz_gram(y, coeffs, _gram_restart_every(schedule))
  else:
    y = _newton_schulz_wide(y, coeffs)
  if tall:
    y = jnp.swapaxes(y, -1, -2)
  return y.astype(out_dtype)
