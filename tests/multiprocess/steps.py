"""The steps that tests/test_multiprocess.py has every worker process take on
the global mesh, and takes itself on one device for the reference.

Imports jax: a script must configure jax (``XLA_FLAGS``, ``JAX_PLATFORMS``,
``jax.distributed.initialize``) before importing this module.
"""

from __future__ import annotations

import contextlib

import jax
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import matopt
from matopt import sharding

# Four square hidden matrices (a group that fills half of 8 devices, so it is
# spread, padded to 8), a scanned stack of four (4, 32, 64) layers (spread
# too), one wide matrix alone in its group (XLA's sharded matmuls instead)
# and a norm scale (AdamW / the vector norm).
SHAPES = {
  **{f"h_{i}": {"kernel": (64, 64)} for i in range(4)},
  "blocks": {"kernel": (4, 32, 64)},
  "mlp": {"kernel": (64, 128)},
  "ln": {"scale": (64,)},
}
STACKED = matopt.DimensionNumbers(reduction_axis=1, output_axis=2)


def _dimension_numbers(params):
  return jax.tree.map(lambda x: STACKED if x.ndim == 3 else None, params)


OPTIMIZERS = {
  "muon": lambda: matopt.muon(0.02, dimension_numbers=_dimension_numbers),
  "scion": lambda: matopt.scion(0.01, dimension_numbers=_dimension_numbers),
  # Roots and bases from the first step, with a ridge, as in
  # tests/test_sharding_recipe.py: after one or two steps a statistic of a
  # side longer than the other has rank ≤ 2·(short side), and SOAP's basis
  # in its null space is whatever rounding makes it; max_precond_dim=32
  # leaves only sides whose statistics have full rank (the stack's 32 side:
  # four 32×32 eigenbases, spread over the devices).
  "shampoo": lambda: matopt.shampoo(1e-3, precondition_every=1, eps=1e-4, dimension_numbers=_dimension_numbers),
  "soap": lambda: matopt.soap(3e-3, precondition_every=1, max_precond_dim=32, dimension_numbers=_dimension_numbers),
}
STEPS = 2
# Compiled without LLVM's optimisations (as tests/test_sharding_recipe.py
# does): about half the compile time of these small programs, which run in
# milliseconds; the partitioning (what the test is about) is the same.
COMPILER_OPTIONS = {"xla_backend_optimization_level": 0}


def tree(seed: int) -> dict:
  """Host (NumPy) arrays, the same in every process for the same seed."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(
    lambda shape: rng.standard_normal(shape).astype(np.float32), SHAPES, is_leaf=lambda s: isinstance(s, tuple)
  )


def spec(x, mesh) -> P:
  """Fan-in over the first mesh axis, fan-out over the second (each where
  its size divides), batch axes replicated; vectors over the first axis."""
  names = mesh.axis_names
  fits = lambda dim, i: names[i] if x.shape[dim] % mesh.shape[names[i]] == 0 else None
  if x.ndim == 1:
    return P(fits(0, 0))
  return P(*[None] * (x.ndim - 2), fits(-2, 0), fits(-1, 1))


def place(host_tree, mesh):
  """Global arrays on ``mesh``: each process builds only its own shards
  from the host value every process holds."""

  def put(x):
    layout = NamedSharding(mesh, spec(x, mesh))
    return jax.make_array_from_callback(x.shape, layout, lambda index: x[index])

  return jax.tree.map(put, host_tree)


def to_host(tree_, mesh=None) -> list[np.ndarray]:
  """The leaves as whole NumPy arrays in every process: one jitted identity
  to a replicated layout for the whole tree (a global array's other shards
  live in other processes)."""
  leaves = jax.tree.leaves(tree_)
  if mesh is not None:
    leaves = jax.jit(lambda t: t, out_shardings=NamedSharding(mesh, P()))(leaves)
  return [np.asarray(x.addressable_data(0)) if isinstance(x, jax.Array) else np.asarray(x) for x in leaves]


def flops(compiled) -> float:
  cost = compiled.cost_analysis()
  return float((cost[0] if isinstance(cost, list) else cost)["flops"])


def run(name: str, mesh=None, *, save=None, restore=None) -> dict:
  """``STEPS`` steps of optimizer ``name`` the README's way, on ``mesh`` (or
  on one device when None).

  Args:
    name: a key of ``OPTIMIZERS``.
    mesh: the (global) mesh, or None.
    save: called as ``save(params, state)`` after the first step.
    restore: called as ``restore(params, state)`` with the initial params
      and state (the templates of their shapes and shardings); what it
      returns replaces them, and only the last step is taken.

  Returns:
    ``params`` and ``updates`` (per step, their leaves on the host), ``state`` (the final
    state's leaves on the host), ``flops`` (per device, of the compiled
    update), ``state_specs`` (per point: after init_state and after each
    step, the state's partition specs as strings), ``state_kept`` (every
    state array's sharding equivalent to its initial one after each step),
    ``updates_in_param_layout``, ``cache_sizes`` (the update's jit cache
    before and after the last step). The initial state is the restored one
    where ``restore`` is given.
  """
  tx = OPTIMIZERS[name]()
  params, grads = tree(0), [tree(seed) for seed in range(1, STEPS + 1)]
  if mesh is not None:
    params, grads = place(params, mesh), [place(g, mesh) for g in grads]
    state = sharding.init_state(tx, params)
  else:
    state = tx.init(params)
  if restore is not None:
    params, state = restore(params, state)
    grads = grads[-1:]
  specs = lambda s: [str(x.sharding.spec) if mesh is not None else "" for x in jax.tree.leaves(s)]
  initial = [x.sharding for x in jax.tree.leaves(state)]
  layouts = [getattr(x, "sharding", None) for x in jax.tree.leaves(params)]
  out = {
    "params": [],
    "updates": [],
    "state_specs": [specs(state)],
    "state_kept": True,
    "updates_in_param_layout": True,
  }
  step = jax.jit(tx.update, compiler_options=COMPILER_OPTIONS)
  apply = jax.jit(optax.apply_updates, compiler_options=COMPILER_OPTIONS)
  with jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext():
    for t, g in enumerate(grads):
      if t == len(grads) - 1:
        out["cache_sizes"] = [step._cache_size()]
      updates, state = step(g, state, params)
      params = apply(params, updates)
      host = to_host((params, updates), mesh)
      if t == 0 and save is not None:
        save(params, state)
      out["params"].append(host[: len(host) // 2])
      out["updates"].append(host[len(host) // 2 :])
      out["state_specs"].append(specs(state))
      if mesh is not None:
        kept = [a.is_equivalent_to(s.sharding, s.ndim) for a, s in zip(initial, jax.tree.leaves(state))]
        out["state_kept"] &= all(kept)
        same = [a.is_equivalent_to(u.sharding, u.ndim) for a, u in zip(layouts, jax.tree.leaves(updates))]
        out["updates_in_param_layout"] &= all(same)
    out["cache_sizes"].append(step._cache_size())
    # Lowered again for the cost; the executable comes from jax's cache.
    out["flops"] = flops(step.lower(grads[-1], state, params).compile())
  out["state"] = to_host(state, mesh)
  return out
