"""SOAP: Adam run in the eigenbasis of Shampoo's statistics (Vyas et al. 2025)."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from matopt import _checks, _tree
from matopt import sharding as sharding_lib
from matopt.linalg.eigenbasis import eigenbasis, refresh_eigenbasis
from matopt.transforms import views as views_lib

_EMPTY = ()  # placeholder of a side with no preconditioner: 0-d, not 0-size (orbax cannot save 0-size arrays)


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
  stats_left: optax.Updates
  stats_right: optax.Updates
  basis_left: optax.Updates
  basis_right: optax.Updates


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
) -> optax.GradientTransformation:
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
  """
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
  b1, b2, eps, beta = map(f32, (b1, b2, eps, beta))
  views_lib.check_dimension_numbers_spec(dimension_numbers)
  fields = ("stats_left", "stats_right", "basis_left", "basis_right")

  def views_of(tree):
    return views_lib.resolve_views(dimension_numbers, tree, transform="scale_by_soap", vectors_ok=True)

  def init_leaf(leaf, view):
    empty = jnp.zeros(_EMPTY, jnp.float32)
    if view is None:
      return jnp.zeros(jnp.shape(leaf), jnp.float32), empty, empty, empty, empty
    b, m, n = view.batch, view.fan_in, view.fan_out
    left, right = m <= max_precond_dim, n <= max_precond_dim
    zeros = lambda s: jnp.zeros((b, s, s), jnp.float32)
    eye = lambda s: jnp.broadcast_to(jnp.eye(s, dtype=jnp.float32), (b, s, s))
    return (jnp.zeros((b, m, n), jnp.float32),
            zeros(m) if left else empty, zeros(n) if right else empty,
            eye(m) if left else empty, eye(n) if right else empty)

  def mu_dtype(leaf):
    # m is kept in at least float32: rounded to bfloat16 in the original
    # coordinates, its error has components in directions where the rotated
    # second moment is ~0 (the null space of rank-deficient statistics), and
    # m/√v turns them into O(100) steps. The reference keeps it in float32 too.
    return jnp.float64 if jnp.result_type(leaf) == jnp.float64 else jnp.float32

  def unflatten(treedef, per_leaf, i):
    return jax.tree_util.tree_unflatten(treedef, [p if _tree.is_masked(p) else p[i] for p in per_leaf])

  def init_fn(params):
    leaves, treedef = jax.tree_util.tree_flatten(params, is_leaf=_tree.is_masked)
    per_leaf = [leaf if _tree.is_masked(leaf) else init_leaf(leaf, v)
                for leaf, v in zip(leaves, views_of(params))]
    per_leaf = sharding_lib.shard_rows(per_leaf, sharding_lib.mesh_of(params))
    return ScaleBySoapState(
        jnp.zeros([], jnp.int32), jax.tree.map(lambda x: jnp.zeros_like(x, mu_dtype(x)), params),
        *(unflatten(treedef, per_leaf, i) for i in range(5)),
    )

  def rotate(x, ql, qr, forward):
    """Q_Lᵀ x Q_R (forward) or Q_L x Q_Rᵀ (back); empty bases are identities."""
    if ql.ndim:
      x = (jnp.swapaxes(ql, -1, -2) if forward else ql) @ x
    if qr.ndim:
      x = x @ (qr if forward else jnp.swapaxes(qr, -1, -2))
    return x

  def update_leaf(g, m, v, sl, sr, ql, qr, view, skip, k):
    """The update and new second moment and statistics (bases unchanged)."""
    g32 = g.astype(jnp.float32)
    if view is None:  # plain Adam on vectors and scalars
      v_new = b2 * v + (1.0 - b2) * g32 * g32
      u = (m.astype(jnp.float32) / (1.0 - b1**k)) / (jnp.sqrt(v_new / (1.0 - b2**k)) + eps)
      return jnp.where(skip, 0.0, u).astype(g.dtype), jnp.where(skip, v, v_new), sl, sr
    gm = view.to_matrices(g32)
    mm = view.to_matrices(m.astype(jnp.float32))
    g_rot = rotate(gm, ql, qr, True)
    v_new = b2 * v + (1.0 - b2) * g_rot * g_rot
    n_rot = (rotate(mm, ql, qr, True) / (1.0 - b1**k)) / (jnp.sqrt(v_new / (1.0 - b2**k)) + eps)
    u = view.from_matrices(rotate(n_rot, ql, qr, False))
    u = jnp.where(skip, 0.0, u).astype(g.dtype)
    v = jnp.where(skip, v, v_new)
    # Statistics take this gradient after it was used (the reference's order).
    if sl.ndim:
      sl = beta * sl + (1.0 - beta) * (gm @ jnp.swapaxes(gm, -1, -2))
    if sr.ndim:
      sr = beta * sr + (1.0 - beta) * (jnp.swapaxes(gm, -1, -2) @ gm)
    return u, v, sl, sr

  def grouped(fn, *columns):
    """``fn`` over every statistic at once, grouped by size and spread over
    the mesh (each device computes whole eigendecompositions)."""
    flat = lambda x: x.reshape(-1, *x.shape[-2:])
    outs = sharding_lib.map_stacked(lambda stacks, key: fn(*stacks), [tuple(map(flat, c)) for c in zip(*columns)])
    return [tuple(o.reshape(*c.shape[:-2], *o.shape[1:]) for o in out) for out, c in zip(outs, columns[0])]

  def update_fn(updates, state, params=None):
    del params
    count = optax.safe_increment(state.count)  # 1-based index of this call
    # start = 1 is the reference's convention: the first call only builds the
    # bases (zero update), so Adam's count lags one behind.
    from_first = jnp.asarray(start) == 1
    skip = (count == 1) & from_first
    k = jnp.maximum(count - from_first.astype(count.dtype), 1).astype(jnp.float32)  # Adam's step number
    build = count == start
    refresh = (count > start) & ((count - start) % precondition_every == 0)
    mu = jax.tree.map(
        lambda m, g: jnp.where(skip, m, b1 * m + (1.0 - b1) * g.astype(m.dtype)).astype(m.dtype), state.mu, updates)
    flat = lambda t: jax.tree_util.tree_flatten(t, is_leaf=_tree.is_masked)[0]
    leaves, treedef = jax.tree_util.tree_flatten(updates, is_leaf=_tree.is_masked)
    columns = zip(leaves, flat(mu), flat(state.nu), *(flat(getattr(state, f)) for f in fields), views_of(updates))
    per_leaf = []
    for g, m, v, sl, sr, ql, qr, view in columns:
      if _tree.is_masked(g):
        per_leaf.append(g)
      else:  # [u, v, stats_left, stats_right, basis_left, basis_right]
        per_leaf.append([*update_leaf(g, m, v, sl, sr, ql, qr, view, skip, k), ql, qr])
    leaf_ids = [i for i, leaf in enumerate(per_leaf) if not _tree.is_masked(leaf)]
    # (leaf, side) for every rotated side; side 0 is left (rows of V), 1 right.
    sides = [(i, side) for i in leaf_ids for side in (0, 1) if per_leaf[i][2 + side].ndim]

    def first_bases(stats, bases, vs):
      new = [q for (q,) in grouped(lambda a, q0: (_finite_or(eigenbasis(a), q0),), stats, bases)]
      vs = dict(vs)
      for (i, side), q in zip(sides, new):
        # V was kept in the identity basis before the start step: carry its
        # diagonal over, E[(Qᵀ G)²] ≈ (Q ⊙ Q)ᵀ E[G²] for uncorrelated entries
        # (zero at start = 1, where V is still empty).
        # (Overflowed entries are capped first: 0 · inf would be NaN.)
        q2, v = q * q, jnp.minimum(vs[i], jnp.finfo(vs[i].dtype).max)
        vs[i] = jnp.swapaxes(q2, -1, -2) @ v if side == 0 else v @ q2
      return new, vs

    def new_bases(stats, bases, vs):
      refreshed = grouped(_guarded_refresh, stats, bases)
      vs = dict(vs)
      for (i, side), (_, perm) in zip(sides, refreshed):
        # V lives in the old basis: its rows (left) or columns (right) follow π.
        index = perm[..., :, None] if side == 0 else perm[..., None, :]
        vs[i] = jnp.take_along_axis(vs[i], index, axis=-2 + side)
      return [q for q, _ in refreshed], vs

    if sides:
      # Bases of every statistic at once: eigh on the first call, a power
      # step + QR on refresh steps (V permuted along), unchanged otherwise.
      stats = [per_leaf[i][2 + side] for i, side in sides]
      bases = [per_leaf[i][4 + side] for i, side in sides]
      vs = {i: per_leaf[i][1] for i, _ in sides}
      branch = jnp.where(build, 1, jnp.where(refresh, 2, 0))
      bases, vs = jax.lax.switch(branch, [lambda s_, b_, v_: (b_, v_), first_bases, new_bases], stats, bases, vs)
      for (i, side), q in zip(sides, bases):
        per_leaf[i][4 + side] = q
        per_leaf[i][1] = vs[i]
    placed = sharding_lib.shard_rows([per_leaf[i][1:] for i in leaf_ids])
    for i, leaf_state in zip(leaf_ids, placed):
      per_leaf[i][1:] = leaf_state
    outs = [unflatten(treedef, per_leaf, i) for i in range(6)]
    return outs[0], ScaleBySoapState(count, mu, *outs[1:])

  return optax.GradientTransformation(init_fn, sharding_lib.auto_axes_update(update_fn))
