"""SOAP: Adam run in the eigenbasis of Shampoo's statistics (Vyas et al. 2025)."""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from matopt import _checks, _tree
from matopt import sharding as sharding_lib
from matopt.linalg.eigenbasis import eigenbasis, refresh_eigenbasis
from matopt.transforms import kronecker as kron
from matopt.transforms import views as views_lib


class ScaleBySoapState(NamedTuple):
  """State of :func:`scale_by_soap`; every field but ``count`` is a tree with
  the parameters' structure.

  ``mu`` is kept in the original coordinates (float32, or float64 for
  float64 parameters), which is the same as rotating it into each new basis; ``nu`` lives in the rotated basis,
  shaped like the leaf's matrix view ``(batch, m, n)`` (float32). Statistics
  and bases are ``(batch, m, m)`` / ``(batch, n, n)`` float32, or empty
  a 0-d placeholder for a side that is not rotated.
  """

  count: jax.Array  # int32 calls so far
  mu: optax.Updates
  nu: optax.Updates
  stats_left: optax.Updates  # the fields of kronecker.Factors, one tree each
  stats_right: optax.Updates
  basis_left: optax.Updates
  basis_right: optax.Updates


class _Options(NamedTuple):
  """Checked options of :func:`scale_by_soap` (numbers may be float32 arrays)."""

  b1: Any
  b2: Any
  eps: Any
  beta: Any  # shampoo_beta
  start: Any  # start_preconditioning_step
  every: Any  # precondition_every
  max_precond_dim: int


class _Step(NamedTuple):
  """One leaf's update, new second moment and factors (bases unchanged)."""

  update: jax.Array
  nu: jax.Array
  factors: kron.Factors


def _options(
  *, b1, b2, eps, precondition_every, start_preconditioning_step, shampoo_beta, max_precond_dim, dimension_numbers
) -> _Options:
  """Every option of :func:`scale_by_soap` checked, defaults resolved."""
  _checks.check_range("b1", b1, 0.0, 1.0, hi_open=True)
  _checks.check_range("b2", b2, 0.0, 1.0, hi_open=True)
  _checks.check_range("eps", eps, 0.0, float("inf"))
  beta = b2 if shampoo_beta is None else shampoo_beta
  _checks.check_range("shampoo_beta", beta, 0.0, 1.0, hi_open=True)
  _checks.check_step_option("precondition_every", precondition_every)
  start = precondition_every if start_preconditioning_step is None else start_preconditioning_step
  _checks.check_step_option("start_preconditioning_step", start)
  max_precond_dim = _checks.static_size("max_precond_dim", max_precond_dim, 10000)
  # Traced hyperparameters (optax.inject_hyperparams) enter float32 arithmetic only.
  f32 = lambda x: jnp.asarray(x, jnp.float32) if isinstance(x, jax.Array) else x
  views_lib.check_dimension_numbers_spec(dimension_numbers)
  return _Options(f32(b1), f32(b2), f32(eps), f32(beta), start, precondition_every, max_precond_dim)


def _finite_or(q: jax.Array, q_old: jax.Array) -> jax.Array:
  """``q`` where every entry of a matrix is finite, else that matrix's old basis.

  Statistics that overflowed (gradients near 1e30 squared exceed float32)
  give NaN eigenvectors; keeping the previous basis keeps the update finite,
  as Shampoo keeps its previous root (scalable_shampoo)."""
  ok = jnp.all(jnp.isfinite(q), axis=(-2, -1), keepdims=True)
  return jnp.where(ok, q, q_old)


def _guarded_refresh(a: jax.Array, q: jax.Array) -> tuple[jax.Array, jax.Array]:
  """:func:`refresh_eigenbasis`, keeping the old basis (identity permutation)
  where the new one is not finite."""
  q_new, perm = refresh_eigenbasis(a, q)
  ok = jnp.all(jnp.isfinite(q_new), axis=(-2, -1))
  identity = jnp.broadcast_to(jnp.arange(perm.shape[-1], dtype=perm.dtype), perm.shape)
  return jnp.where(ok[..., None, None], q_new, q), jnp.where(ok[..., None], perm, identity)


def _mu_dtype(leaf: jax.Array) -> Any:
  # m is kept in at least float32: rounded to bfloat16 in the original
  # coordinates, its error has components in directions where the rotated
  # second moment is ~0 (the null space of rank-deficient statistics), and
  # m/√v turns them into O(100) steps. The reference keeps it in float32 too.
  return jnp.float64 if jnp.result_type(leaf) == jnp.float64 else jnp.float32


def _init_nu(leaf: jax.Array, view: views_lib.MatrixView | None) -> jax.Array:
  """Zero second moment: the leaf's shape, or its matrix view's."""
  return jnp.zeros(jnp.shape(leaf) if view is None else (view.batch, view.fan_in, view.fan_out), jnp.float32)


def _init_leaf(o: _Options, leaf: jax.Array, view: views_lib.MatrixView | None) -> kron.Factors:
  """Zero statistics and identity bases for the sides of at most ``max_precond_dim``."""
  del leaf
  if view is None:
    return kron.no_factors()
  m, n = view.fan_in, view.fan_out
  return kron.init_factors((view.batch,), m, n, m <= o.max_precond_dim, n <= o.max_precond_dim)


def _schedule(o: _Options, count: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """``(skip, k, branch)`` of call ``count``: whether the update is zero,
  Adam's step number and what happens to the bases (0: kept, 1: built, 2: refreshed)."""
  # start = 1 is the reference's convention: the first call only builds the
  # bases (zero update), so Adam's count lags one behind.
  from_first = jnp.asarray(o.start) == 1
  skip = (count == 1) & from_first
  k = jnp.maximum(count - from_first.astype(count.dtype), 1).astype(jnp.float32)  # Adam's step number
  build = count == o.start
  refresh = (count > o.start) & ((count - o.start) % o.every == 0)
  return skip, k, jnp.where(build, 1, jnp.where(refresh, 2, 0))


def _rotate(x: jax.Array, factors: kron.Factors, forward: bool) -> jax.Array:
  """Q_Lᵀ x Q_R (forward) or Q_L x Q_Rᵀ (back); placeholder bases are identities."""
  t = lambda q: jnp.swapaxes(q, -1, -2) if q.ndim else q
  if forward:
    return kron.two_sided(t(factors.left), x, factors.right)
  return kron.two_sided(factors.left, x, t(factors.right))


def _adam_step(
  o: _Options,
  g: jax.Array,
  s: jax.Array,
  m: jax.Array,
  v: jax.Array,
  factors: kron.Factors,
  view: views_lib.MatrixView | None,
  skip: jax.Array,
  k: jax.Array,
) -> _Step:
  """One leaf's Adam step in its eigenbases, with the statistics of ``s``
  (``g`` itself, or the gradient passed as ``stats_grads``)."""
  g32 = g.astype(jnp.float32)
  if view is None:  # plain Adam on vectors and scalars
    v_new = o.b2 * v + (1.0 - o.b2) * g32 * g32
    u = (m.astype(jnp.float32) / (1.0 - o.b1**k)) / (jnp.sqrt(v_new / (1.0 - o.b2**k)) + o.eps)
    return _Step(jnp.where(skip, 0.0, u).astype(g.dtype), jnp.where(skip, v, v_new), factors)
  gm = view.to_matrices(g32)
  mm = view.to_matrices(m.astype(jnp.float32))
  g_rot = _rotate(gm, factors, True)
  v_new = o.b2 * v + (1.0 - o.b2) * g_rot * g_rot
  n_rot = (_rotate(mm, factors, True) / (1.0 - o.b1**k)) / (jnp.sqrt(v_new / (1.0 - o.b2**k)) + o.eps)
  u = view.from_matrices(_rotate(n_rot, factors, False))
  # Statistics take this gradient after it was used (the reference's order).
  sm = gm if s is g else view.to_matrices(s.astype(jnp.float32))
  return _Step(
    jnp.where(skip, 0.0, u).astype(g.dtype),
    jnp.where(skip, v, v_new),
    kron.accumulate(factors, sm, o.beta, 1.0 - o.beta),
  )


def _first_bases(
  where: list[kron.Side], stats: list[jax.Array], bases: list[jax.Array], vs: dict[int, jax.Array]
) -> tuple[list[jax.Array], dict[int, jax.Array]]:
  """Bases by ``eigh``, with V carried into them."""
  new = [q for (q,) in kron.map_sides(lambda a, q0: (_finite_or(eigenbasis(a), q0),), stats, bases)]
  vs = dict(vs)
  for side, q in zip(where, new):
    # V was kept in the identity basis before the start step: carry its
    # diagonal over, E[(Qᵀ G)²] ≈ (Q ⊙ Q)ᵀ E[G²] for uncorrelated entries
    # (zero at start = 1, where V is still empty).
    # (Overflowed entries are capped first: 0 · inf would be NaN.)
    q2, v = q * q, jnp.minimum(vs[side.leaf], jnp.finfo(vs[side.leaf].dtype).max)
    vs[side.leaf] = jnp.swapaxes(q2, -1, -2) @ v if side.left else v @ q2
  return new, vs


def _next_bases(
  where: list[kron.Side], stats: list[jax.Array], bases: list[jax.Array], vs: dict[int, jax.Array]
) -> tuple[list[jax.Array], dict[int, jax.Array]]:
  """Bases by one power step + QR, with V permuted along."""
  refreshed = kron.map_sides(_guarded_refresh, stats, bases)
  vs = dict(vs)
  for side, (_, perm) in zip(where, refreshed):
    # V lives in the old basis: its rows (left) or columns (right) follow π.
    index = perm[..., :, None] if side.left else perm[..., None, :]
    vs[side.leaf] = jnp.take_along_axis(vs[side.leaf], index, axis=-2 if side.left else -1)
  return [q for q, _ in refreshed], vs


def _refresh_bases(per_leaf: list[Any], nus: list[Any], branch: jax.Array) -> tuple[list[Any], list[Any]]:
  """Bases of every statistic at once: ``eigh`` on the build call, a power
  step + QR on refresh steps (V permuted along), unchanged otherwise
  (``branch`` 1, 2, 0); grouped by size and spread over the mesh (each
  device computes whole eigendecompositions)."""
  where = kron.sides(per_leaf)
  if not where:
    return per_leaf, nus
  stats, bases = kron.gather(per_leaf, where)
  vs = {side.leaf: nus[side.leaf] for side in where}
  keep = lambda stats, bases, vs: (bases, vs)
  branches = [keep, functools.partial(_first_bases, where), functools.partial(_next_bases, where)]
  bases, vs = jax.lax.switch(branch, branches, stats, bases, vs)
  return kron.scatter(per_leaf, where, bases), [vs.get(i, v) for i, v in enumerate(nus)]


def _factors_of(state: ScaleBySoapState) -> list[Any]:
  return kron.split(kron.Factors(state.stats_left, state.stats_right, state.basis_left, state.basis_right))


def _state(count, mu, treedef, nus: list[Any], per_leaf: list[Any]) -> ScaleBySoapState:
  f = kron.join(treedef, per_leaf)
  nu = jax.tree_util.tree_unflatten(treedef, nus)
  return ScaleBySoapState(count, mu, nu, f.stats_left, f.stats_right, f.left, f.right)


def scale_by_soap(
  *,
  b1: float = 0.95,
  b2: float = 0.95,
  eps: float = 1e-8,
  precondition_every: int = 10,
  start_preconditioning_step: int | None = None,
  shampoo_beta: float | None = None,
  max_precond_dim: int | None = None,
  dimension_numbers: Any = None,
) -> optax.GradientTransformationExtraArgs:
  r"""SOAP direction: Adam in the eigenbasis of Shampoo's L and R.

  For a matrix with gradient :math:`G_t`, eigenbases :math:`Q_L, Q_R` and
  Adam step :math:`k`:

  .. math::
    M_k = b_1 M_{k-1} + (1 - b_1) G_t, \quad
    \tilde G = Q_L^\top G_t Q_R, \quad
    V_k = b_2 V_{k-1} + (1 - b_2) \tilde G^{\odot 2}
    \\
    u_t = Q_L \frac{Q_L^\top M_k Q_R / (1 - b_1^k)}
      {\sqrt{V_k / (1 - b_2^k)} + \epsilon} Q_R^\top

  then :math:`L \leftarrow \beta L + (1-\beta) G_t G_t^\top`, likewise R.
  The bases are the identity (plain Adam, :math:`k = t`) until call
  :math:`t_0` = ``start_preconditioning_step``, after whose update they are
  built by ``eigh`` of L and R, with :math:`V` carried over as
  :math:`(Q_L^{\odot 2})^\top V Q_R^{\odot 2}` (the rotated second moment of
  uncorrelated entries). From then on, every ``precondition_every`` steps the
  bases are refreshed by one power iteration + QR
  (:func:`matopt.linalg.eigenbasis.refresh_eigenbasis`), with
  :math:`V` permuted to follow the eigenvalue order. :math:`M` is kept in the
  original coordinates, so it is exactly rotated into each new basis. A side
  longer than ``max_precond_dim`` is not rotated; leaves with no matrix view
  (vectors, scalars) get plain Adam. With every gradient diagonal, the bases
  are permutations and the update equals Adam.

  ``start_preconditioning_step=1`` is the reference code's convention: call 1
  only builds the statistics and bases and returns a zero update, and
  :math:`k = t - 1`. The default waits for ``precondition_every`` gradients
  instead (as Meta's DistributedShampoo starts its roots): bases of one
  gradient's statistics are arbitrary in their null space (rank ≤ min(m, n)),
  and Adam run in such a basis made the update depend on round-off (a 1e-6
  relative change of one gradient changed later updates by 67%; runs on a
  mesh drifted from one device). Statistics whose rank is still deficient at
  the start (a side longer than ``start_preconditioning_step`` times the
  other) keep some of that sensitivity. :math:`M` is kept in float32 (float64 for float64
  parameters), as in the reference: rounded to bfloat16 in the original
  coordinates it leaks into directions where :math:`V \approx 0`.

  ``update(grads, state, params, stats_grads=G_s)`` takes L and R from
  another gradient, :math:`L \leftarrow \beta L + (1-\beta) G_s G_s^\top`,
  while the moments and the update use :math:`G_t`; with the gradient at
  labels sampled from the model (:func:`matopt.sampled_label_grads`) the
  bases are the eigenbases of the Gauss–Newton matrix's Kronecker factors
  instead of the empirical Fisher's (Morwani et al. 2025). ``stats_grads``
  must have the gradients' tree and shapes (a ValueError names the first
  leaf that differs); without it the statistics are the gradient's own.

  Every numeric option but ``max_precond_dim`` (it fixes the state's shapes)
  may be an array, as ``optax.inject_hyperparams`` passes them.

  With ``start_preconditioning_step=1`` the steps equal those of
  pytorch-optimizer's ``SOAP`` (4.1.0, a faithful port of the reference
  ``soap.py``; run in ``tests/parity/test_soap.py``, weights transposed to
  torch's ``(out, in)``) to float32 round-off: ≤ 2.4e-6 relative where a
  side is rotated in a basis of full-rank statistics, 2e-5 for a square
  matrix whose first bases come from one gradient (the reference's own
  float32 run is 1.7e-5 from its float64 run there). Its options
  ``merge_dims``, ``precondition_1d`` and ``normalize_gradient`` (off by
  default) have no counterpart here; ``correct_bias`` is always on. Bases of
  a rank-deficient statistic (a side longer than the other, from one
  gradient) are arbitrary in its null space, so there the two differ by
  O(1) (measured 37–67% over steps 2–4 for 24×8 and 8×24 rotated on both
  sides).

  Args:
    b1: first-moment EMA.
    b2: second-moment EMA.
    eps: Adam's ε, added to the root of the bias-corrected second moment,
      :math:`\sqrt{V/(1-b_2^k)} + \epsilon`, as ``optax.adam`` and
      ``torch.optim.Adam``. The reference adds it before the correction
      (:math:`\sqrt{V} + \epsilon`, then times :math:`\sqrt{1-b_2^k}`), an ε
      larger by :math:`1/\sqrt{1-b_2^k}` (4.5× at k = 1 with b2 = 0.95): the
      same to round-off for gradients ≫ ε, 41–166% apart for gradients of
      1e-8 (measured).
    precondition_every: steps between basis refreshes.
    start_preconditioning_step: call (1-based) after whose update the bases
      are first built; None: ``precondition_every``.
    shampoo_beta: EMA of L and R (None: ``b2``, as the reference).
    max_precond_dim: sides longer than this stay unrotated (None: 10000).
    dimension_numbers: matrix views, as in :func:`matopt.scale_by_msign`.

  Returns:
    An ``optax.GradientTransformation`` with :class:`ScaleBySoapState`.

  References:
    Vyas, Morwani, Zhao, Kwun, Shapira, Brandfonbrener, Janson, Kakade, 2025.
    SOAP: Improving and Stabilizing Shampoo using Adam. ICLR.

    Morwani, Shapira, Vyas, Malach, Kakade, Janson, 2025. A New Perspective
    on Shampoo's Preconditioner. ICLR.
  """
  o = _options(
    b1=b1,
    b2=b2,
    eps=eps,
    precondition_every=precondition_every,
    start_preconditioning_step=start_preconditioning_step,
    shampoo_beta=shampoo_beta,
    max_precond_dim=max_precond_dim,
    dimension_numbers=dimension_numbers,
  )

  def views_of(tree):
    return views_lib.resolve_views(dimension_numbers, tree, transform="scale_by_soap", vectors_ok=True)

  def init_fn(params):
    views = views_of(params)
    nus = kron.init_leaves(params, views, _init_nu)
    per_leaf = kron.init_leaves(params, views, functools.partial(_init_leaf, o))
    mu = jax.tree.map(lambda x: jnp.zeros_like(x, _mu_dtype(x)), params)
    return _state(jnp.zeros([], jnp.int32), mu, kron.leaves_of(params)[1], nus, per_leaf)

  def update_fn(updates, state, params=None, *, stats_grads=None, **extra_args):
    del params, extra_args
    count = optax.safe_increment(state.count)  # 1-based index of this call
    skip, k, branch = _schedule(o, count)
    mu = jax.tree.map(
      lambda m, g: jnp.where(skip, m, o.b1 * m + (1.0 - o.b1) * g.astype(m.dtype)).astype(m.dtype), state.mu, updates
    )
    leaves, treedef = kron.leaves_of(updates)
    stats_leaves = (
      leaves if stats_grads is None else _tree.leaves_like("scale_by_soap", "stats_grads", updates, stats_grads)
    )
    columns = zip(
      leaves, stats_leaves, kron.leaves_of(mu)[0], kron.leaves_of(state.nu)[0], _factors_of(state), views_of(updates)
    )
    steps = [
      g if _tree.is_masked(g) else _adam_step(o, g, s, m, v, f, view, skip, k) for g, s, m, v, f, view in columns
    ]
    outs = [s if _tree.is_masked(s) else s.update for s in steps]
    nus = [s if _tree.is_masked(s) else s.nu for s in steps]
    per_leaf, nus = _refresh_bases([s if _tree.is_masked(s) else s.factors for s in steps], nus, branch)
    nus, per_leaf = sharding_lib.shard_rows((nus, per_leaf))
    return jax.tree_util.tree_unflatten(treedef, outs), _state(count, mu, treedef, nus, per_leaf)

  return optax.GradientTransformationExtraArgs(init_fn, sharding_lib.auto_axes_update(update_fn))
