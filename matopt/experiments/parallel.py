"""The main job on a device mesh (``mesh:`` in a config).

Layout, for a mesh with axes ``(data, model)`` (any names; the first axis
plays ``data``, the second ``model``):

- each batch's leading axis is split over ``data`` (data parallelism);
- each parameter of two or more dimensions has its fan-in (second to last)
  axis split over ``data`` and its fan-out (last) axis over ``model``, each
  only where the axis's size divides it; vectors and scalars are replicated.
  Weights are thus stored once per mesh (FSDP-style over ``data``, column
  tensor parallelism over ``model``) and XLA inserts the gathers and
  reductions (``AxisType.Auto``), so the losses are those of one device up
  to float rounding;
- optimizer state follows its parameter (momentum), Shampoo's and SOAP's
  preconditioners are split by rows (:func:`matopt.sharding.shard_rows`), the
  rest is replicated (:func:`matopt.sharding.init_state`);
- the step runs under ``jax.set_mesh(mesh)``, where matopt's transforms
  spread Newton–Schulz iterations, inverse roots and eigenbases over every
  device (:mod:`matopt.sharding`). The optimizer's update runs with the
  mesh's axes Explicit (``jax.sharding.explicit_axes``, with the layouts
  above), so that :mod:`matopt.sharding` knows them and sends each device
  only the blocks of the matrices it orthogonalises, the least any
  whole-matrix scheme sends (``benchmarks/comm_bytes.py``); the model stays
  on Auto axes;
- the mesh may span several JAX processes
  (:mod:`matopt.experiments.processes`): each places only the blocks its own
  devices hold (:func:`place`).

A one-axis mesh is data parallelism with FSDP-style weights; axes after the
second split nothing but the optimizer's matrix work.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from matopt.experiments.config import MeshSpec


def make_mesh(spec: MeshSpec) -> jax.sharding.Mesh:
  """``jax.make_mesh`` with Auto axes (XLA places what the layout leaves open)."""
  return jax.make_mesh(spec.shape, spec.axes, axis_types=(jax.sharding.AxisType.Auto,) * len(spec.axes))


def _axis(mesh: jax.sharding.Mesh, index: int, size: int) -> str | None:
  """The name of the mesh's ``index``-th axis when it splits ``size`` evenly."""
  if index >= len(mesh.axis_names):
    return None
  name = mesh.axis_names[index]
  return name if size % mesh.shape[name] == 0 else None


def param_sharding(x: Any, mesh: jax.sharding.Mesh) -> NamedSharding:
  """Fan-in over the first mesh axis, fan-out over the second (where they divide)."""
  shape = np.shape(x)
  if len(shape) < 2:
    return NamedSharding(mesh, PartitionSpec())
  spec = [None] * (len(shape) - 2) + [_axis(mesh, 0, shape[-2]), _axis(mesh, 1, shape[-1])]
  while spec and spec[-1] is None:  # the form jit gives its outputs (one compilation)
    spec.pop()
  return NamedSharding(mesh, PartitionSpec(*spec))


def batch_sharding(x: Any, mesh: jax.sharding.Mesh) -> NamedSharding:
  """Leading axis over the first mesh axis; replicated when it does not divide
  (a validation split cut into batches of another size)."""
  shape = np.shape(x)
  axis = _axis(mesh, 0, shape[0]) if shape else None
  return NamedSharding(mesh, PartitionSpec(axis) if axis else PartitionSpec())


def place(x: Any, sharding: NamedSharding) -> jax.Array:
  """``x`` (the same value in every process) as a global array laid out by ``sharding``.

  In one process, ``jax.device_put``. When the mesh spans processes
  (:mod:`matopt.experiments.processes`), each process copies only the blocks
  its own devices hold (``jax.make_array_from_callback``): no data crosses
  processes, and the global array is the one a single process would build.
  """
  if sharding.is_fully_addressable:
    return jax.device_put(x, sharding)
  host = np.asarray(x)
  return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def place_params(params: Any, mesh: jax.sharding.Mesh) -> Any:
  """``params`` placed by :func:`param_sharding`."""
  return jax.tree.map(lambda x: place(x, param_sharding(x, mesh)), params)


def place_batch(batch: Any, mesh: jax.sharding.Mesh) -> Any:
  """A batch (an array or a tuple of them) placed by :func:`batch_sharding`."""
  return jax.tree.map(lambda x: place(x, batch_sharding(x, mesh)), batch)


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  """The whole array on every device of ``mesh``."""
  return NamedSharding(mesh, PartitionSpec())
