"""Mesh-aware distribution of per-matrix work (Newton–Schulz, LMOs).

Work on a list of matrices is grouped by shape and dtype; each group is
stacked into one ``(N, m, n)`` array and handed to the batched function in a
single call. Inside ``jax.jit`` under a mesh (``jax.set_mesh(mesh)``), the
stack's leading axis is sharded over every device of the mesh, padded with
zero matrices to a multiple of the device count, so each device computes
whole matrices and no device repeats another's work (the dion / modded-nanogpt
scheme: stack, scatter, orthogonalise locally, gather). XLA inserts the
all-to-alls between the parameters' layout and the stack's.

Without a mesh (or on one device) the same grouping still turns many small
calls into one batched call. A group with fewer matrices than half the
devices is left to XLA's sharded matmuls instead (padding it would leave most
devices computing zeros), as is a matrix above ``max_matrix_bytes``.

Under an explicit-sharding mesh (``AxisType.Explicit``), each result is
resharded to its input's sharding; under ``AxisType.Auto`` the layout of the
results follows XLA's propagation (pin it with ``out_shardings``).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence

import jax
import jax.numpy as jnp
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
  replicated = NamedSharding(meshes[0], PartitionSpec())

  def place(x):
    sharding = getattr(x, "sharding", None)
    if isinstance(sharding, NamedSharding) and sharding.mesh == meshes[0]:
      return x
    return jax.device_put(x, replicated)

  return jax.tree.map(place, state)


def _explicit_sharding(x: jax.Array) -> NamedSharding | None:
  sharding = getattr(jax.typeof(x), "sharding", None)
  if isinstance(sharding, NamedSharding) and any(s is not None for s in sharding.spec):
    return sharding
  return None


def _distribute(stack: jax.Array, mesh: jax.sharding.AbstractMesh) -> jax.Array:
  """The stack's leading axis over every device of the mesh."""
  spec = PartitionSpec(mesh.axis_names)
  if all(t == jax.sharding.AxisType.Explicit for t in mesh.axis_types):
    return jax.sharding.reshard(stack, spec)  # shardings are part of the types
  return jax.lax.with_sharding_constraint(stack, NamedSharding(mesh, spec))


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
  keys = [None] * len(matrices) if keys is None else list(keys)
  groups: dict[tuple, list[int]] = {}
  for i, (x, key) in enumerate(zip(matrices, keys)):
    groups.setdefault((x.shape[1:], jnp.dtype(x.dtype), key), []).append(i)
  mesh = current_mesh()
  out: list[jax.Array | None] = [None] * len(matrices)
  for (shape, dtype, key), members in groups.items():
    parts = [matrices[i] for i in members]
    first = _explicit_sharding(parts[0])
    if first is not None:  # explicit shardings must agree to concatenate
      parts = [p if _explicit_sharding(p) == first else jax.sharding.reshard(p, first.spec) for p in parts]
    stack = jnp.concatenate(parts, axis=0) if len(parts) > 1 else parts[0]
    count = stack.shape[0]
    matrix_bytes = dtype.itemsize * shape[0] * shape[1]
    spread = mesh is not None and count * 2 >= mesh.size and matrix_bytes <= max_matrix_bytes
    if spread:
      pad = -count % mesh.size
      if pad:  # zero matrices (msign(0) = lmo(0) = 0), in the stack's own layout
        stack = jnp.pad(stack, ((0, pad), (0, 0), (0, 0)))
      result = _distribute(fn(_distribute(stack, mesh), key), mesh)
      targets = [_explicit_sharding(matrices[i]) for i in members]
      if any(t is not None for t in targets):
        # Explicit shardings: slicing a sharded axis is not allowed, so bring
        # the stack back to the members' own matrix layout first (one
        # all-to-all when they agree, replicated otherwise).
        specs = {tuple(t.spec)[1:] if t is not None else (None, None) for t in targets}
        inner = specs.pop() if len(specs) == 1 else (None, None)
        result = jax.sharding.reshard(result, PartitionSpec(None, *inner))
      result = result[:count]
    else:
      targets = [None] * len(members)
      result = fn(stack, key)
    start = 0
    for i, target in zip(members, targets):
      size = matrices[i].shape[0]
      piece = result[start:start + size]
      start += size
      out[i] = jax.sharding.reshard(piece, target) if target is not None else piece
  return out
