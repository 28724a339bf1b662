"""Shampoo: Kronecker-factored preconditioning L^{-p} G R^{-p} with grafting."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from matopt import _checks, _tree
from matopt import sharding as sharding_lib
from matopt.linalg import roots as roots_lib
from matopt.transforms import views as views_lib
from matopt.transforms.blocks import make_blocking

GRAFTS = ("adam", "rmsprop", "sgd", "none")
_EMPTY = ()  # placeholder of a side with no preconditioner: 0-d, not 0-size (orbax cannot save 0-size arrays)


class Preconditioner(NamedTuple):
  """One leaf's Kronecker factors: blocked statistics and their inverse roots.

  Shapes ``(batch, bm, bn, s, s)``; a side that is not preconditioned (or a
  leaf with no matrix view) holds a 0-d placeholder.
  """

  stats_left: jax.Array
  stats_right: jax.Array
  root_left: jax.Array
  root_right: jax.Array


class ScaleByShampooState(NamedTuple):
  """State of :func:`scale_by_shampoo`.

  Every field but ``count`` is a tree with the parameters' structure (so
  wrappers such as ``flax.nnx.Optimizer`` can map over it leaf by leaf):
  ``mu`` in the parameters' dtype, the rest float32.
  """

  count: jax.Array  # int32 steps taken
  mu: optax.Updates  # momentum of gradients
  nu: optax.Updates  # graft's second moment (empty for sgd/none)
  stats_left: optax.Updates  # Preconditioner fields, one tree each
  stats_right: optax.Updates
  root_left: optax.Updates
  root_right: optax.Updates


def _layout(view, block_size, max_precond_dim):
  blocking = make_blocking(view.fan_in, view.fan_out, block_size)
  return blocking, blocking.sm <= max_precond_dim, blocking.sn <= max_precond_dim


def _eye_stack(shape_prefix, size):
  return jnp.broadcast_to(jnp.eye(size, dtype=jnp.float32), (*shape_prefix, size, size))


def scale_by_shampoo(
    *,
    beta: float = 0.95,
    exponent: float = 0.25,
    eps: float = 1e-12,
    precondition_every: int = 10,
    start_preconditioning_step: int | None = None,
    b1: float = 0.0,
    graft: str = "adam",
    graft_b2: float = 0.95,
    graft_eps: float = 1e-8,
    graft_per_block: bool = True,
    block_size: int | None = None,
    max_precond_dim: int | None = None,
    root_method: str = "eigh",
    max_root_error: float = 0.1,
    dimension_numbers: Any = None,
) -> optax.GradientTransformation:
  r"""Shampoo preconditioning of every matrix leaf, grafted onto a simple step.

  For gradient :math:`G_t` of a matrix (or block), every step:

  .. math::
    L_t = \beta L_{t-1} + w\, G_t G_t^\top, \quad
    R_t = \beta R_{t-1} + w\, G_t^\top G_t, \quad
    w = \begin{cases} 1 & \beta = 1 \\ 1 - \beta & \beta < 1 \end{cases}
    \\
    M_t = b_1 M_{t-1} + (1 - b_1) G_t, \qquad
    D_t = \hat L^{-p} M_t \hat R^{-p}, \qquad
    u_t = \frac{\|A_t\|_F}{\|D_t\|_F} D_t

  where :math:`\hat L^{-p}, \hat R^{-p}` are inverse roots with a ridge
  ``eps`` relative to the largest eigenvalue (:func:`matopt.inverse_pth_root`;
  eigenvalues below eigh's round-off are treated as equal), recomputed every
  ``precondition_every`` steps from step ``start_preconditioning_step`` on, and :math:`A_t` is the graft's direction
  (``"adam"``: :math:`\hat M_t/(\sqrt{\hat V_t} + \epsilon_g)`; ``"rmsprop"``:
  :math:`M_t/(\sqrt{V_t} + \epsilon_g)`; ``"sgd"``: :math:`M_t`), whose norm
  the Shampoo direction takes block by block (each ``block_size`` block of a
  matrix, as Meta's DistributedShampoo; Shi et al. 2023) or, with
  ``graft_per_block=False``, matrix by matrix (all its blocks together, as
  Google's scalable_shampoo grafts each tensor once; Anil et al. 2020).
  ``graft="none"`` returns :math:`D_t`. Before the start step the update is :math:`A_t` (:math:`M_t`
  for ``"none"``). With ``beta=0``, ``exponent=1/4``, ``b1=0``, no graft and a
  root every step, :math:`u_t = \operatorname{msign}(G_t)` (R. Qiu, "Matrix-Based
  Optimizers", lecture, 15 October 2025).

  The first root waits for ``precondition_every`` gradients by default, as
  Meta's DistributedShampoo does (``start_preconditioning_step = -1``): a root
  of one gradient's statistics (rank ≤ min(m, n)) reused for the next steps
  amplifies every new direction by up to ``eps^{-p}`` and made the update
  depend on round-off (a 1e-6 relative change of one gradient changed the
  next update by 90%). Google's distributed Shampoo likewise starts late
  (``start_preconditioning_step``) from statistics ``ε·I``.

  Every numeric option but ``block_size`` and ``max_precond_dim`` (which fix
  the state's shapes) may be an array, as ``optax.inject_hyperparams`` passes
  them; ``root_method="newton"`` also needs a Python ``exponent``.

  Matrices are cut into blocks of at most ``block_size`` per side; a block
  side larger than ``max_precond_dim`` is left unpreconditioned. Leaves with
  no matrix view (vectors, scalars) get the graft's update. A root that is
  non-finite (or, for ``root_method="newton"``, whose residual exceeds
  ``max_root_error``) is rejected and the previous one kept.

  Against Google's ``optax_shampoo.distributed_shampoo`` (0.0.6, run in
  ``tests/parity/test_shampoo.py``) the updates agree to float32 round-off
  (≤ 2e-6 relative, tall, wide, square and unevenly blocked matrices) with
  ``beta = beta2``, ``eps = matrix_epsilon``, ``graft="sgd"`` or
  ``"rmsprop"`` (``graft_b2 = beta2``, ``graft_eps = diagonal_epsilon``),
  ``graft_per_block=False``, ``b1=0`` (its ``beta1`` chained as
  ``optax.trace``), the start and schedule mapped as below, the reference's
  ``best_effort_shape_interpretation=False`` (otherwise a matrix with
  ``m·n ≤ 4096`` is merged into one axis with an ``mn × mn`` statistic) and
  its statistics zeroed at init. The departures are documented beside
  ``eps``, ``b1``, ``start_preconditioning_step``, ``graft_per_block``,
  ``max_precond_dim`` and ``root_method``.

  Args:
    beta: EMA of the statistics (0: current gradient only; 1: running sum,
      the original Shampoo).
    exponent: p in :math:`L^{-p} G R^{-p}` (1/4 for a matrix).
    eps: ridge relative to each statistic's largest eigenvalue, ``ε·λ_max``
      (floored at √tiny ≈ 1e-19 only so that an all-zero statistic stays
      invertible); statistics start at 0. So the update does not depend on
      the gradients' scale. Google's distributed_shampoo starts its
      statistics at ``ε·I`` (an absolute ridge that ``beta=1`` keeps for
      ever) and adds ``ε·max(λ_max, 1e-6)``: the same to round-off for unit
      gradients, but with ε = 1e-6 and a running sum its updates differ from
      matopt's by up to 6.5% for gradients of 1e-3 (the ``ε·I`` start) and by
      up to 1e-3 for gradients of 1e-5 with zeroed statistics (the 1e-6
      floor), measured on 16×8, 8×16 and 12×12 matrices.
    precondition_every: steps between root computations, counted from
      ``start_preconditioning_step`` (a fresh root at the first Shampoo
      step). Google's distributed_shampoo counts from step 0 whatever its
      start (roots at 0-based steps ``k·preconditioning_compute_steps``), so
      its ``(start_preconditioning_step=s, preconditioning_compute_steps=k)``
      equals matopt's ``(s + 1, k)`` when ``s % k == 0``; otherwise its
      first Shampoo steps use a root from before the start (s = 2, k = 3:
      71% apart at the first Shampoo step, 16% three steps later).
    start_preconditioning_step: first call (1-based) that uses Shampoo;
      None: ``precondition_every``. Google's distributed_shampoo's
      ``start_preconditioning_step`` counts from 0: its ``s`` is matopt's
      ``s + 1``.
    b1: momentum of the gradient, an EMA taken before preconditioning and
      shared with the graft (Meta's DistributedShampoo ``betas[0]``, its
      "filtered gradient"); 0 for none. Google's distributed_shampoo's
      ``beta1`` is a heavy ball on the grafted update instead
      (``m ← β₁m + u``, Nesterov ``u + β₁m``): with ``b1=0``,
      ``optax.chain(scale_by_shampoo(...), optax.trace(β₁, nesterov=...))``
      is that update to round-off; ``b1=β₁`` is another method (94% apart,
      measured, RMSprop graft, β₁ = 0.9).
    graft: ``"adam"``, ``"rmsprop"``, ``"sgd"`` or ``"none"``. ``"rmsprop"``
      is distributed_shampoo's ``RMSPROP`` (no bias correction); it has no
      Adam graft, matopt no AdaGrad one.
    graft_b2: second-moment EMA of the Adam / RMSprop graft.
    graft_eps: ε of the Adam / RMSprop graft.
    graft_per_block: graft each block to the norm of the graft's step on
      that block (Meta's DistributedShampoo), or, False, each matrix of the
      view once, all its blocks together (Google's distributed_shampoo
      grafts each tensor once). The same when a matrix is one block; for an
      18×14 matrix in blocks of 10 the two were 4–11% apart (measured).
    block_size: largest block side (None: 1024); matrices whose sides are
      all at most this are not cut, so a large int keeps whole matrices.
      Edge blocks are zero-padded to ``block_size``, which gives the same
      roots as distributed_shampoo's smaller edge blocks.
    max_precond_dim: block sides above this get no preconditioner (None:
      8192); the other side still does. distributed_shampoo leaves the whole
      tensor to the graft when any side exceeds its
      ``skip_preconditioning_dim_size_gt`` (4096).
    root_method: ``"eigh"`` or ``"newton"`` (:func:`matopt.inverse_pth_root`).
      distributed_shampoo runs a coupled Newton iteration in float32 with
      λ_max from power iteration. matopt's ``"newton"`` takes its ridge
      relative to ``‖A‖_F`` (≥ λ_max) instead, so it departs where a
      statistic's spectrum is spread: 6.4e-6 from the reference with
      statistics of three gradients, 3.2e-5 with those of one or two
      (ε = 1e-6), against 9e-6 for ``"eigh"`` (measured, 16×8, 8×16, 12×12).
    max_root_error: failure guard threshold for ``"newton"`` roots.
    dimension_numbers: matrix views, as in :func:`matopt.scale_by_msign`.

  Returns:
    An ``optax.GradientTransformation`` with :class:`ScaleByShampooState`.

  References:
    Gupta, Koren, Singer, 2018. Shampoo: Preconditioned Stochastic Tensor
    Optimization. ICML.

    Anil, Gupta, Koren, Regan, Singer, 2020. Scalable Second Order
    Optimization for Deep Learning. arXiv:2002.09018

    Shi et al., 2023. A Distributed Data-Parallel PyTorch Implementation of
    the Distributed Shampoo Optimizer. arXiv:2309.06497
  """
  _checks.check_range("beta", beta, 0.0, 1.0)
  _checks.check_range("exponent", exponent, 0.0, float("inf"), lo_open=True)
  _checks.check_range("eps", eps, 0.0, float("inf"))
  _checks.check_range("b1", b1, 0.0, 1.0, hi_open=True)
  _checks.check_range("graft_b2", graft_b2, 0.0, 1.0, hi_open=True)
  _checks.check_range("graft_eps", graft_eps, 0.0, float("inf"))
  _checks.check_range("max_root_error", max_root_error, 0.0, float("inf"), lo_open=True)
  _checks.check_bool("graft_per_block", graft_per_block)
  _checks.check_step_option("precondition_every", precondition_every)
  if start_preconditioning_step is None:
    start_preconditioning_step = precondition_every
  _checks.check_step_option("start_preconditioning_step", start_preconditioning_step)
  block_size = _checks.static_size("block_size", block_size, 1024)
  max_precond_dim = _checks.static_size("max_precond_dim", max_precond_dim, 8192)
  if graft not in GRAFTS:
    raise ValueError(f"Unknown graft {graft!r}; valid grafts are {GRAFTS}.")
  if root_method not in roots_lib.METHODS:
    raise ValueError(f"Unknown root_method {root_method!r}; valid methods are {roots_lib.METHODS}.")
  views_lib.check_dimension_numbers_spec(dimension_numbers)
  # Traced hyperparameters (optax.inject_hyperparams) take part in float32
  # arithmetic only; nothing below branches on their values in Python.
  f32 = lambda x: jnp.asarray(x, jnp.float32) if isinstance(x, jax.Array) else x
  beta, exponent, eps, b1, graft_b2, graft_eps = map(f32, (beta, exponent, eps, b1, graft_b2, graft_eps))
  max_root_error = f32(max_root_error)
  if root_method == "newton" and isinstance(exponent, jax.Array):
    raise ValueError(
        "root_method='newton' needs a static exponent (an integer 1/exponent); under"
        " optax.inject_hyperparams list 'exponent' in static_args, or use root_method='eigh'.")
  p = 1.0 / exponent
  stat_weight = jnp.where(beta == 1.0, 1.0, 1.0 - beta) if isinstance(beta, jax.Array) else (
      1.0 if beta == 1.0 else 1.0 - beta)

  def views_of(tree):
    return views_lib.resolve_views(dimension_numbers, tree, transform="scale_by_shampoo", vectors_ok=True)

  def init_leaf(leaf, view):
    empty = jnp.zeros(_EMPTY, jnp.float32)
    if view is None:
      return Preconditioner(empty, empty, empty, empty)
    blocking, left, right = _layout(view, block_size, max_precond_dim)
    prefix = (view.batch, blocking.bm, blocking.bn)
    return Preconditioner(
        jnp.zeros((*prefix, blocking.sm, blocking.sm), jnp.float32) if left else empty,
        jnp.zeros((*prefix, blocking.sn, blocking.sn), jnp.float32) if right else empty,
        _eye_stack(prefix, blocking.sm) if left else empty,
        _eye_stack(prefix, blocking.sn) if right else empty,
    )

  def init_fn(params):
    views = views_of(params)
    leaves, treedef = jax.tree_util.tree_flatten(params, is_leaf=_tree.is_masked)
    precs = [leaf if _tree.is_masked(leaf) else init_leaf(leaf, v) for leaf, v in zip(leaves, views)]
    precs = sharding_lib.shard_rows(precs, sharding_lib.mesh_of(params))
    fields = [jax.tree_util.tree_unflatten(treedef, [getattr(p, f, p) for p in precs])
              for f in Preconditioner._fields]
    return ScaleByShampooState(
        jnp.zeros([], jnp.int32),
        optax.tree.zeros_like(params),
        (optax.tree.zeros_like(params, dtype=jnp.float32) if graft in ("adam", "rmsprop")
         else jax.tree.map(lambda _: jnp.zeros(_EMPTY, jnp.float32), params)),
        *fields,
    )

  def new_roots(stacks, key):
    del key
    stats, old_root = stacks
    root = roots_lib.inverse_pth_root(stats, p, eps=eps, method=root_method)
    ok = jnp.all(jnp.isfinite(root), axis=(-2, -1))
    if root_method == "newton":
      ok &= roots_lib.root_error(stats, root, p, eps=eps) < max_root_error
    return (jnp.where(ok[..., None, None], root, old_root),)

  def refresh_roots(stats, roots):
    """Every statistic's inverse root, grouped by size and spread over the
    mesh (each device computes whole roots; Anil et al. 2020, §5)."""
    flat = lambda x: x.reshape(-1, *x.shape[-2:])
    pairs = [(flat(s_), flat(r)) for s_, r in zip(stats, roots)]
    new = sharding_lib.map_stacked(new_roots, pairs)
    return [n[0].reshape(r.shape) for n, r in zip(new, roots)]

  def direction_of(g, m, graft_dir, blocks, prec, view, use_shampoo):
    blocking, left, right = _layout(view, block_size, max_precond_dim)
    mb = blocks
    if left:
      mb = prec.root_left @ mb
    if right:
      mb = mb @ prec.root_right
    if graft != "none":
      # Per block, as Meta's DistributedShampoo grafts (Shi et al. 2023, §3.1):
      # each block keeps the grafted step's norm. Per matrix (all its blocks
      # together), as Google's scalable_shampoo grafts once per tensor (Anil
      # et al. 2020). Zero padding adds nothing to either norm.
      ab = blocking.to_blocks(view.to_matrices(graft_dir.astype(jnp.float32)))
      axes = (-2, -1) if graft_per_block else (1, 2, 3, 4)
      d_norm = jnp.sqrt(jnp.sum(jnp.square(mb), axis=axes, keepdims=True))
      a_norm = jnp.sqrt(jnp.sum(jnp.square(ab), axis=axes, keepdims=True))
      mb = mb * jnp.where(d_norm > 0, a_norm / jnp.where(d_norm > 0, d_norm, 1.0), 0.0)
    direction = view.from_matrices(blocking.from_blocks(mb))
    fallback = graft_dir if graft != "none" else m
    return jnp.where(use_shampoo, direction.astype(g.dtype), fallback.astype(g.dtype))

  def update_fn(updates, state, params=None):
    del params
    count = optax.safe_increment(state.count)
    step = count  # 1-based index of this step
    use_shampoo = step >= start_preconditioning_step
    refresh = use_shampoo & ((step - start_preconditioning_step) % precondition_every == 0)
    # b1 = 0 gives g exactly (0·m + 1·g); float32 arithmetic for low-precision m.
    mu = jax.tree.map(
        lambda m, g: (b1 * m.astype(jnp.float32) + (1.0 - b1) * g.astype(jnp.float32)).astype(m.dtype),
        state.mu, updates)
    if graft in ("adam", "rmsprop"):
      nu = jax.tree.map(lambda v, g: graft_b2 * v + (1.0 - graft_b2) * jnp.square(g.astype(jnp.float32)),
                        state.nu, updates)
      if graft == "adam":
        t = count.astype(jnp.float32)
        c1 = 1.0 - b1**t
        c2 = 1.0 - graft_b2**t
        graft_dirs = jax.tree.map(
            lambda m, v: (m.astype(jnp.float32) / c1) / (jnp.sqrt(v / c2) + graft_eps), mu, nu)
      else:
        graft_dirs = jax.tree.map(lambda m, v: m.astype(jnp.float32) / (jnp.sqrt(v) + graft_eps), mu, nu)
    else:
      nu = state.nu
      graft_dirs = mu
    views = views_of(updates)
    flat = lambda t: jax.tree_util.tree_flatten(t, is_leaf=_tree.is_masked)[0]
    leaves, treedef = jax.tree_util.tree_flatten(updates, is_leaf=_tree.is_masked)
    precs = [Preconditioner(*p) for p in zip(*(flat(getattr(state, f)) for f in Preconditioner._fields))]
    # 1. Statistics, leaf by leaf.
    blocks = {}
    for i, (g, m, view) in enumerate(zip(leaves, flat(mu), views)):
      if _tree.is_masked(g) or view is None:
        continue
      blocking, left, right = _layout(view, block_size, max_precond_dim)
      gb = blocking.to_blocks(view.to_matrices(g).astype(jnp.float32))
      blocks[i] = blocking.to_blocks(view.to_matrices(m).astype(jnp.float32))
      sl, sr = precs[i].stats_left, precs[i].stats_right
      if left:
        sl = beta * sl + stat_weight * (gb @ jnp.swapaxes(gb, -1, -2))
      if right:
        sr = beta * sr + stat_weight * (jnp.swapaxes(gb, -1, -2) @ gb)
      precs[i] = precs[i]._replace(stats_left=sl, stats_right=sr)
    # 2. Roots of all statistics at once, on refresh steps only.
    sides = [(i, side) for i in blocks for side in ("left", "right")
             if getattr(precs[i], f"stats_{side}").ndim]
    stats = [getattr(precs[i], f"stats_{side}") for i, side in sides]
    old = [getattr(precs[i], f"root_{side}") for i, side in sides]
    roots = jax.lax.cond(refresh, lambda: refresh_roots(stats, old), lambda: old) if sides else []
    stats, roots = sharding_lib.shard_rows((stats, roots))
    for (i, side), s_, r in zip(sides, stats, roots):
      precs[i] = precs[i]._replace(**{f"stats_{side}": s_, f"root_{side}": r})
    # 3. Directions, leaf by leaf.
    outs = []
    for i, (g, m, a, view) in enumerate(zip(leaves, flat(mu), flat(graft_dirs), views)):
      if _tree.is_masked(g):
        outs.append(g)
      elif view is None:
        outs.append((a if graft != "none" else m).astype(g.dtype))
      else:
        outs.append(direction_of(g, m, a, blocks[i], precs[i], view, use_shampoo))
    fields = [jax.tree_util.tree_unflatten(treedef, [getattr(p, f, p) for p in precs])
              for f in Preconditioner._fields]
    new_state = ScaleByShampooState(count, mu, nu, *fields)
    return jax.tree_util.tree_unflatten(treedef, outs), new_state

  return optax.GradientTransformation(init_fn, sharding_lib.auto_axes_update(update_fn))
