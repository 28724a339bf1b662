"""Mesh-aware distribution of per-matrix work (Newton–Schulz, LMOs).

Work on a list of matrices is grouped by shape and dtype; each group is
stacked into one ``(N, m, n)`` array and handed to the batched function in a
single call. Inside ``jax.jit`` under a mesh (``jax.set_mesh(mesh)``), the
stack's leading axis is sharded over every device of the mesh, padded with
zero matrices to a multiple of the device count, and ``fn`` runs under
``shard_map`` on each device's own whole matrices, so no device repeats
another's work (the dion / modded-nanogpt scheme: stack, scatter,
orthogonalise locally, gather; Anil et al. 2020 §5 distribute Shampoo's roots
the same way). Under explicit axes (``AxisType.Explicit``) the members'
layouts are known while tracing, and the exchange is written inside the same
``shard_map``: one all-to-all in and one out over the mesh axes that split
the matrices, a local slice and an all-gather over those they are replicated
over, which is the least any whole-matrix scheme sends
(``benchmarks/comm_bytes.py``). Under ``AxisType.Auto`` XLA inserts the
moves between the parameters' layout and the stack's itself.
:func:`map_stacked` does the same for work with several operands (Shampoo's
statistics and previous roots, SOAP's statistics and bases).

Without a mesh (or on one device) the same grouping still turns many small
calls into one batched call. A group with fewer matrices than half the
devices is left to XLA's sharded matmuls instead (padding it would leave most
devices computing zeros, while a sharded matmul splits each product over all
of them), as is a matrix above ``max_matrix_bytes``. Under an explicit-
sharding mesh (``AxisType.Explicit``, ``jax.make_mesh``'s default) such a
group runs inside ``jax.sharding.auto_axes``: the parameters' layout may
shard a contraction (``X Xᵀ`` of a matrix split by rows and columns), which
explicit typing refuses, and XLA then partitions the products as it does
under ``AxisType.Auto``.

Under explicit axes every result comes back in its input's sharding, so
updates have their parameter's layout. Under ``AxisType.Auto`` the layout
inside ``jit`` is not known when tracing: each result is tied to its input
with ``shard_alike``, a hint XLA's propagation follows for these stacks,
but the layout of what ``jit`` returns is XLA's choice; pin it with
``out_shardings`` (as :mod:`matopt.experiments.train` does).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Sequence

import jax
import jax.numpy as jnp
from jax.experimental.shard_alike import shard_alike
from jax.sharding import NamedSharding, PartitionSpec

# Matrices larger than this are not gathered onto one device.
MAX_MATRIX_BYTES = 1 << 30


def current_mesh() -> jax.sharding.AbstractMesh | None:
  """The mesh set by ``jax.set_mesh`` (None when unset or of one device)."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh is None or mesh.empty or mesh.size <= 1:
    return None
  return mesh


def init_state(tx, params):
  """``tx.init(params)`` with every state array on the parameters' mesh.

  Eagerly, ``zeros_like`` state (momentum) already takes its parameter's
  sharding, but scalars such as step counts land on one device; after the
  first jitted update they come back replicated over the mesh, and that
  change of input sharding costs a second compilation. Placing every state
  array that is not already on the mesh replicated over it makes the state's
  shardings the same before and after each update.

  Args:
    tx: an ``optax.GradientTransformation``.
    params: parameters, placed with ``NamedSharding`` (without any, this is
      ``tx.init(params)``).

  Returns:
    The initial state.
  """
  state = tx.init(params)
  meshes = [x.sharding.mesh for x in jax.tree.leaves(params) if isinstance(getattr(x, "sharding", None), NamedSharding)]
  if not meshes:
    return state

  def place(x):
    sharding = getattr(x, "sharding", None)
    on_mesh = isinstance(sharding, NamedSharding) and sharding.mesh == meshes[0]
    spec = _as_jit_returns(sharding.spec if on_mesh else PartitionSpec(), jnp.ndim(x), meshes[0])
    if on_mesh and spec == sharding.spec:
      return x
    # Same layout, in the form jit returns (P() vs P(None,) under explicit axes).
    return jax.device_put(x, NamedSharding(meshes[0], spec))

  return jax.tree.map(place, state)


def _explicit_sharding(x: jax.Array) -> NamedSharding | None:
  sharding = getattr(jax.typeof(x), "sharding", None)
  if isinstance(sharding, NamedSharding) and any(s is not None for s in sharding.spec):
    return sharding
  return None


def _distribute(stack: jax.Array, mesh: jax.sharding.AbstractMesh) -> jax.Array:
  """The stack's leading axis over every device of the mesh."""
  return _constrain(stack, PartitionSpec(mesh.axis_names), mesh)


def map_grouped(
  fn: Callable[[jax.Array, Hashable], jax.Array],
  matrices: Sequence[jax.Array],
  keys: Sequence[Hashable] | None = None,
  *,
  max_matrix_bytes: int = MAX_MATRIX_BYTES,
) -> list[jax.Array]:
  """``[fn(x, key) for x, key in zip(matrices, keys)]``, grouped and distributed.

  Args:
    fn: maps a stack ``(N, m, n)`` to a stack ``(N, m', n')`` matrix by
      matrix (every output matrix depends on its own input only, and a zero
      matrix maps to a finite one, since padding adds zero matrices).
    matrices: arrays ``(batch, m, n)`` (any batch).
    keys: one hashable per entry; only entries with equal keys (and equal
      shape and dtype) share a call, e.g. the norm of an LMO.
    max_matrix_bytes: matrices above this are not gathered onto one device.

  Returns:
    The outputs, in the order of ``matrices``.
  """
  outs = map_stacked(
    lambda stacks, key: (fn(stacks[0], key),), [(x,) for x in matrices], keys, max_matrix_bytes=max_matrix_bytes
  )
  return [out[0] for out in outs]


def map_stacked(
  fn: Callable[[tuple[jax.Array, ...], Hashable], tuple[jax.Array, ...]],
  operands: Sequence[tuple[jax.Array, ...]],
  keys: Sequence[Hashable] | None = None,
  *,
  max_matrix_bytes: int = MAX_MATRIX_BYTES,
) -> list[tuple[jax.Array, ...]]:
  """:func:`map_grouped` for work with several operands and outputs per matrix.

  Shampoo's root takes a statistic and the previous root; SOAP's basis
  refresh returns a basis and a permutation. Entries are grouped by the
  shapes and dtypes of all their operands (and their key), stacked, spread
  over the mesh like :func:`map_grouped`, and split again.

  Args:
    fn: maps a tuple of stacks ``(N, ...)`` to a tuple of stacks ``(N, ...)``,
      entry by entry; zero operands (padding) must give finite outputs.
    operands: per entry, a tuple of arrays sharing their leading (batch) size.
    keys: one hashable per entry, as in :func:`map_grouped`.
    max_matrix_bytes: entries whose first operand's matrix is larger than
      this are not gathered onto one device.

  Returns:
    Per entry, the tuple of outputs.
  """
  keys = [None] * len(operands) if keys is None else list(keys)
  groups: dict[tuple, list[int]] = {}
  for i, (ops, key) in enumerate(zip(operands, keys)):
    signature = tuple((x.shape[1:], jnp.dtype(x.dtype)) for x in ops)
    groups.setdefault((signature, key), []).append(i)
  mesh = current_mesh()
  explicit = mesh is not None and _is_explicit(mesh)
  out: list[tuple[jax.Array, ...] | None] = [None] * len(operands)
  for (signature, key), members in groups.items():
    stacks = tuple(_stack([operands[i][j] for i in members]) for j in range(len(signature)))
    count = stacks[0].shape[0]
    shape, dtype = signature[0]
    matrix_bytes = dtype.itemsize * math.prod(shape)
    # Whole matrices per device when the group fills at least half the mesh:
    # no device repeats another's work, and at most half of them compute
    # padding. Smaller groups (and huge matrices) keep their layout and are
    # split product by product instead (module docstring).
    spread = mesh is not None and count * 2 >= mesh.size and matrix_bytes <= max_matrix_bytes
    if spread:
      pad = -count % mesh.size
      if pad:  # zero entries, in each stack's own layout
        stacks = tuple(jnp.pad(s, ((0, pad),) + ((0, 0),) * (s.ndim - 1)) for s in stacks)
      fused = explicit and _exchange_specs(stacks)
      if fused:
        results = _exchanged(fn, key, mesh, stacks, fused)
      elif explicit:
        moved = [_into_stack(s, mesh) for s in stacks]
        order, path = moved[0][1], moved[0][2]
        stacks = tuple(m[0] if m[1] == order else jax.sharding.reshard(m[0], PartitionSpec(order)) for m in moved)
        results = _local(fn, key, mesh, PartitionSpec(order))(*stacks)
        # Slicing an axis split over the mesh is refused under explicit
        # axes (``count`` need not divide by the device count): bring each
        # stack back to the members' own matrix layout first, retracing the
        # way in one mesh axis at a time (replicated when they disagree or
        # when an output has another shape).
        targets = [_explicit_sharding(operands[i][0]) for i in members]
        specs = {tuple(t.spec)[1:] if t is not None else (None,) * len(shape) for t in targets}
        inner = specs.pop() if len(specs) == 1 else (None,) * len(shape)
        results = tuple(
          jax.sharding.reshard(_out_of_stack(r, path), PartitionSpec(None, *inner))
          if r.shape[1:] == shape
          else jax.sharding.reshard(r, PartitionSpec())
          for r in results
        )
      else:
        results = _local(fn, key, mesh)(*(_distribute(s, mesh) for s in stacks))
      results = tuple(r[:count] for r in results)
    elif explicit:
      results = _auto_axes(fn, key, stacks)
    else:
      results = tuple(fn(stacks, key))
    start = 0
    for i in members:
      size = operands[i][0].shape[0]
      pieces = tuple(r[start : start + size] for r in results)
      start += size
      if mesh is not None:
        pieces = tuple(_like(p, operands[i][0]) if p.shape == operands[i][0].shape else p for p in pieces)
      out[i] = pieces
  return out


def _is_explicit(mesh) -> bool:
  return any(t == jax.sharding.AxisType.Explicit for t in mesh.axis_types)


def _auto_axes(fn, key, stacks: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
  """``fn(stacks, key)`` with XLA choosing how to partition its products.

  Under explicit axes a matmul whose contraction is split over the mesh (a
  Newton–Schulz ``X Xᵀ`` of a matrix laid out ``P("data", "model")``) is a
  type error; inside ``auto_axes`` the same program compiles to the sharded
  matmuls it gets under ``AxisType.Auto``. Each output leaves in the layout
  of the operand of its shape (replicated when none has it).
  """
  plain = [jax.ShapeDtypeStruct(s.shape, s.dtype) for s in stacks]
  shapes = jax.eval_shape(lambda *s: tuple(fn(s, key)), *plain)
  layouts = {s.shape: jax.typeof(s).sharding.spec for s in reversed(stacks)}
  out_specs = tuple(layouts.get(r.shape, PartitionSpec()) for r in shapes)
  return jax.sharding.auto_axes(lambda *s: tuple(fn(s, key)), out_sharding=out_specs)(*stacks)


def _like(new: jax.Array, old: jax.Array) -> jax.Array:
  """``new`` in ``old``'s sharding (same shape), inside ``jit`` under a mesh.

  Explicit axes: a reshard to ``old``'s type. Auto axes: the layout is only
  known once XLA propagates it, so the two are tied with ``shard_alike``, so
  that propagation carries the input's layout (not the stack's) on to the
  update; a hint, not a guarantee (module docstring).
  """
  mesh = current_mesh()
  if mesh is None:
    return new
  if _is_explicit(mesh):
    spec = jax.typeof(old).sharding.spec
    return new if jax.typeof(new).sharding.spec == spec else jax.sharding.reshard(new, spec)
  return shard_alike(old, new)[1]


def _entry_axes(entry) -> tuple[str, ...]:
  return () if entry is None else (entry if isinstance(entry, tuple) else (entry,))


def _entry(axes: tuple[str, ...]):
  """A ``PartitionSpec`` entry from a tuple of mesh axes: :func:`_entry_axes` backwards."""
  return axes if len(axes) > 1 else (axes[0] if axes else None)


def _into_stack(
  stack: jax.Array, mesh: jax.sharding.AbstractMesh
) -> tuple[jax.Array, tuple[str, ...], list[PartitionSpec]]:
  """Explicit axes: the stack's leading axis over every device, one mesh axis at a time.

  Used when the stack's own leading axis is split (a member split along its
  batch axis), which :func:`_exchanged` does not handle.

  A matrix axis split over two mesh axes (``P(None, "data", "model")``) cannot
  go to ``P(("data", "model"), None, None)`` in one step: XLA's partitioner
  replicates the whole stack on every device and slices it (8× the bytes on a
  (4, 2) mesh, ``benchmarks/comm_bytes.py``). Moving one mesh axis at a time
  from the matrix axes to the leading axis makes each step an all-to-all
  within that axis's groups.

  Returns:
    The stack laid out ``P(order)``, ``order`` (the moved axes, then the
    axes the stack was replicated over, which cost only a local slice), and
    the specs it passed through, for :func:`_out_of_stack`.
  """
  spec = list(jax.typeof(stack).sharding.spec)
  spec += [None] * (stack.ndim - len(spec))
  lead = list(_entry_axes(spec[0]))
  path = [PartitionSpec(*spec)]
  for d in range(1, stack.ndim):
    for axis in _entry_axes(spec[d]):
      rest = tuple(a for a in _entry_axes(spec[d]) if a != axis)
      spec[d] = _entry(rest)
      lead.append(axis)
      spec[0] = tuple(lead)
      path.append(PartitionSpec(*spec))
      stack = jax.sharding.reshard(stack, path[-1])
  order = (*lead, *(a for a in mesh.axis_names if a not in lead))
  return jax.sharding.reshard(stack, PartitionSpec(order)), order, path


def _out_of_stack(stack: jax.Array, path: list[PartitionSpec]) -> jax.Array:
  """The way :func:`_into_stack` came, backwards: a gather over the axes the
  stack was replicated over, then one mesh axis at a time back to its place."""
  for spec in reversed(path):
    stack = jax.sharding.reshard(stack, spec)
  return stack


def _exchange_specs(stacks: tuple[jax.Array, ...]) -> list[tuple[tuple[str, ...], ...]] | None:
  """Each stack's layout, one tuple of mesh axes per axis, when :func:`_exchanged`
  applies (explicit shardings, the leading axis not split); else None."""
  specs = []
  for stack in stacks:
    sharding = getattr(jax.typeof(stack), "sharding", None)
    if not isinstance(sharding, NamedSharding):
      return None
    spec = [_entry_axes(e) for e in sharding.spec] + [()] * (stack.ndim - len(sharding.spec))
    if spec[0]:
      return None
    specs.append(tuple(spec))
  return specs


def _exchanged(fn, key, mesh, stacks: tuple[jax.Array, ...], specs) -> tuple[jax.Array, ...]:
  """``fn`` on whole matrices per device, the stacks staying in their layout outside.

  One ``shard_map`` over the stacks as they are laid out: each device sends
  every other device the blocks it holds of that device's matrices (one
  all-to-all over the mesh axes that split the matrices; the axes they are
  replicated over cost a local slice), runs ``fn`` on its whole matrices,
  and sends the blocks of the results back (an all-to-all, then an
  all-gather over the replicated axes). Device ``c`` (in the mesh's order)
  computes entries ``c r .. (c + 1) r - 1``, whatever each operand's layout.
  Each device then sends exactly the Dion minimum (``benchmarks/comm_bytes.py``);
  resharding the stack's leading axis over the mesh instead moves one mesh
  axis at a time and sends more (1.43× for ``P("data", "model")`` matrices on
  a (4, 2) mesh). Outputs of another shape than the first operand's come
  back replicated.
  """
  shape = stacks[0].shape[1:]
  # The outputs' shapes, traced where ``fn`` runs: under ``shard_map`` (``fn``
  # may name the mesh's axes, e.g. ``lax.axis_index``).
  probe = jax.shard_map(
    lambda *s: tuple(fn(s, key)), mesh=mesh, in_specs=PartitionSpec(), out_specs=PartitionSpec(), check_vma=False
  )
  out_shapes = jax.eval_shape(probe, *[jax.ShapeDtypeStruct((1, *s.shape[1:]), s.dtype) for s in stacks])
  same = [r.shape[1:] == shape for r in out_shapes]
  spec_of = lambda spec: PartitionSpec(*map(_entry, spec))

  def body(*local):
    whole = tuple(_whole_matrices(x, spec, mesh) for x, spec in zip(local, specs))
    results = tuple(fn(whole, key))
    return tuple(
      _matrix_blocks(r, specs[0], mesh) if keep else jax.lax.all_gather(r, mesh.axis_names, axis=0, tiled=True)
      for r, keep in zip(results, same)
    )

  out_specs = tuple(spec_of(specs[0]) if keep else PartitionSpec() for keep in same)
  return jax.shard_map(
    body, mesh=mesh, in_specs=tuple(spec_of(s) for s in specs), out_specs=out_specs, check_vma=False
  )(*stacks)


def _split_axes(spec, mesh) -> tuple[list[str], list[str]]:
  """The mesh axes that split the matrices and those they are replicated over, each in the mesh's order."""
  split = {a for entry in spec[1:] for a in entry}
  return [a for a in mesh.axis_names if a in split], [a for a in mesh.axis_names if a not in split]


def _block_order(spec, split: list[str]) -> list[int]:
  """Where each axis of ``(split axes, entries, blocks...)`` goes in
  ``(entries, [spec's axes of dim 1], block 1, ...)``: a matrix axis split
  over ``(a, b)`` is ``a``-major, as ``NamedSharding`` lays it out."""
  order = [len(split)]
  for d in range(1, len(spec)):
    order += [split.index(a) for a in spec[d]] + [len(split) + d]
  return order


def _whole_matrices(x: jax.Array, spec, mesh) -> jax.Array:
  """Inside ``shard_map``: from this device's blocks of all ``N`` entries to
  its own ``N / mesh.size`` entries, whole."""
  split, replicated = _split_axes(spec, mesh)
  sizes = [mesh.shape[a] for a in mesh.axis_names]
  r, blocks = x.shape[0] // mesh.size, x.shape[1:]
  x = x.reshape(*sizes, r, *blocks)
  for a in replicated:  # this device's entries among those the group of `a` holds alike: a local slice
    x = jax.lax.dynamic_slice_in_dim(x, jax.lax.axis_index(a), 1, axis=mesh.axis_names.index(a))
  x = x.reshape(-1, r, *blocks)
  if not split:
    return x[0]
  # Row k of the result: the blocks that the k-th device of the split axes holds of this device's entries.
  x = jax.lax.all_to_all(x, tuple(split), 0, 0, tiled=False)
  x = x.reshape(*[mesh.shape[a] for a in split], r, *blocks).transpose(_block_order(spec, split))
  return x.reshape(r, *[b * math.prod(mesh.shape[a] for a in entry) for b, entry in zip(blocks, spec[1:])])


def _matrix_blocks(y: jax.Array, spec, mesh) -> jax.Array:
  """Inside ``shard_map``: :func:`_whole_matrices` backwards, from this device's
  whole results to its blocks of all ``N`` of them."""
  split, replicated = _split_axes(spec, mesh)
  r = y.shape[0]
  blocks = [n // math.prod(mesh.shape[a] for a in entry) for n, entry in zip(y.shape[1:], spec[1:])]
  if split:
    dims = [r] + [size for entry, b in zip(spec[1:], blocks) for size in (*[mesh.shape[a] for a in entry], b)]
    order = _block_order(spec, split)
    y = y.reshape(dims).transpose([order.index(i) for i in range(len(order))])
    y = jax.lax.all_to_all(y.reshape(-1, r, *blocks), tuple(split), 0, 0, tiled=False)
  else:
    y = y.reshape(1, r, *blocks)
  if replicated:
    y = jax.lax.all_gather(y, tuple(replicated), axis=0, tiled=False)
  else:
    y = y[None]
  # Axes now (replicated..., split..., entries, blocks): put them in the mesh's order.
  y = y.reshape(*[mesh.shape[a] for a in (*replicated, *split)], r, *blocks)
  position = {a: i for i, a in enumerate((*replicated, *split))}
  y = y.transpose([position[a] for a in mesh.axis_names] + list(range(len(position), y.ndim)))
  return y.reshape(-1, *blocks)


def _local(fn, key, mesh, spec: PartitionSpec | None = None):
  """``fn`` run by each device on its own slice of the stacks.

  Under ``shard_map`` every device sees only its whole matrices, so data-
  dependent loops (the Newton root's convergence test) stop per device and
  no collective runs inside them; the only communication is the all-to-all
  into and out of the stack layout. ``spec`` is that layout, the leading
  axis over every mesh axis (in the mesh's order unless given).
  """
  spec = PartitionSpec(mesh.axis_names) if spec is None else spec
  return jax.shard_map(
    lambda *stacks: tuple(fn(stacks, key)), mesh=mesh, in_specs=spec, out_specs=spec, check_vma=False
  )


def _stack(parts: list[jax.Array]) -> jax.Array:
  first = _explicit_sharding(parts[0])
  if first is not None:  # explicit shardings must agree to concatenate
    parts = [p if _explicit_sharding(p) == first else jax.sharding.reshard(p, first.spec) for p in parts]
  return jnp.concatenate(parts, axis=0) if len(parts) > 1 else parts[0]


def _row_spec(x: jax.Array, mesh) -> PartitionSpec:
  if x.ndim >= 2 and x.shape[-2] % mesh.size == 0:
    return PartitionSpec(*([None] * (x.ndim - 2)), mesh.axis_names, None)
  return PartitionSpec()


def shard_rows(tree, mesh: jax.sharding.Mesh | None = None):
  """Preconditioner state laid out over the mesh: rows over every device.

  Shampoo's and SOAP's statistics, roots and bases are square matrices
  ``(..., s, s)`` with no parameter layout to follow (SOAP's second moment,
  kept in the rotated basis, neither). Each is split by rows over all devices
  of the mesh (replicated when the rows are not a multiple of the device
  count), so its memory falls with the device count. Applied at
  ``init`` and to every new state, the layout is the same before and after an
  update, so the update compiles once.

  Args:
    tree: arrays to place (empty arrays are left alone).
    mesh: a concrete mesh to ``device_put`` onto (at ``init``, from the
      parameters' shardings); None for the mesh of ``jax.set_mesh`` inside a
      traced function, or nothing at all without one.

  Returns:
    The tree, placed or constrained.
  """
  if mesh is None:
    mesh = current_mesh()
    if mesh is None:
      return tree
    return jax.tree.map(lambda x: _constrain(x, _row_spec(x, mesh), mesh) if x.size else x, tree)
  if mesh.size <= 1:
    return tree
  place = lambda x: jax.device_put(x, NamedSharding(mesh, _as_jit_returns(_row_spec(x, mesh), x.ndim, mesh)))
  return jax.tree.map(lambda x: place(x) if x.size else x, tree)


def mesh_of(tree) -> jax.sharding.Mesh | None:
  """The mesh of the first array in ``tree`` placed with a ``NamedSharding``."""
  for x in jax.tree.leaves(tree):
    sharding = getattr(x, "sharding", None)
    if isinstance(sharding, NamedSharding):
      return sharding.mesh
  return None


def _constrain(x: jax.Array, spec: PartitionSpec, mesh) -> jax.Array:
  if all(t == jax.sharding.AxisType.Explicit for t in mesh.axis_types):
    return jax.sharding.reshard(x, spec)
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


def auto_axes_update(update_fn: Callable) -> Callable:
  """An ``update_fn`` that runs with Auto axes under an explicit-axis mesh.

  Under ``AxisType.Explicit`` every matmul must agree with its operands'
  shardings; Shampoo's and SOAP's products of blocks with statistics mix
  layouts freely. Inside ``jax.sharding.auto_axes`` XLA chooses, and the
  updates and state come back in the shardings they came in with (so the
  state's types are the same after the update and nothing recompiles).
  Under ``AxisType.Auto`` nothing changes: tying the outputs to the inputs
  with ``shard_alike`` was tried, and it moves state (the grafting moments
  of a replicated vector) onto the mesh instead; pin the layouts with
  ``jax.jit(..., out_shardings=...)`` there.
  """

  def wrapped(updates, state, params=None, **extra_args):
    mesh = current_mesh()
    if mesh is None or not _is_explicit(mesh):
      return update_fn(updates, state, params, **extra_args)
    specs = jax.tree.map(lambda x: jax.typeof(x).sharding.spec, (updates, state))
    fn = lambda u, s, p, extra: update_fn(u, s, p, **extra)
    return jax.sharding.auto_axes(fn, out_sharding=specs)(updates, state, params, extra_args)

  return wrapped


def _as_jit_returns(spec: PartitionSpec, ndim: int, mesh) -> PartitionSpec:
  """``spec`` in the form jit gives its outputs: one entry per axis under
  explicit axes, no trailing Nones under auto axes. jit's cache compares
  specs as written, so state placed at ``init`` in any other form would
  compile the update a second time."""
  parts = list(spec)
  if all(t == jax.sharding.AxisType.Explicit for t in mesh.axis_types):
    return PartitionSpec(*parts, *[None] * (ndim - len(parts)))
  while parts and parts[-1] is None:
    parts.pop()
  return PartitionSpec(*parts)
