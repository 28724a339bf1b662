"""Bytes each device sends in one sharded Muon step, read from the compiled HLO.

Run: python benchmarks/comm_bytes.py [--layers 8] [--width 256] [--vocab 1024] [--no-optax] [--quick]

On the 8 host CPU devices (``--xla_force_host_platform_device_count=8``, set
here before jax is imported), for a GPT-shaped tree (per layer a fused QKV
``(d, 3d)``, an attention projection ``(d, d)``, MLP kernels ``(d, 4d)`` and
``(4d, d)``, norm scales; embedding and head; the leaves of the ``gpt`` task's
model in :mod:`matopt.experiments.models`) and for each layout matopt's
sharding supports, ``matopt.muon``'s update is compiled as the README's
"Sharding" section does (``jax.jit(tx.update)`` under ``jax.set_mesh``; with
``out_shardings`` pinned to the inputs' layouts under ``AxisType.Auto``, as
``matopt run`` does) and every collective of the compiled HLO is counted.

Layouts (every 2-D parameter; vectors are replicated):

- ``replicated``: mesh ``(8,)``, ``P()``: data parallelism, gradients already
  all-reduced;
- ``fsdp``: mesh ``(8,)``, ``P("data")``: fan-in split over the devices;
- ``2-D``: mesh ``(4, 2)``, ``P("data", "model")``: fan-in over ``data``,
  fan-out over ``model`` (:func:`matopt.experiments.parallel.param_sharding`).

Bytes per device (ring algorithms; ``g`` the replica group's size; shapes in
the partitioned HLO are per device):

- all-gather: result bytes × (g − 1)/g;
- reduce-scatter: operand bytes × (g − 1)/g;
- all-reduce: 2 × bytes × (g − 1)/g (a reduce-scatter and an all-gather);
- all-to-all: operand bytes × (g − 1)/g (each device keeps its own 1/g);
- collective-permute: operand bytes × (source–target pairs)/(devices): each
  source sends its whole operand once, averaged over the mesh.

Asynchronous pairs (``*-start`` / ``*-done``) are counted once, at the start;
a collective inside a ``while`` body counts ``known_trip_count`` times (once
where XLA does not know the count: a lower bound).

The minimum. Muon's only non-elementwise work is ``msign`` of each hidden
matrix's momentum; Nesterov momentum, the shape scale, weight decay and the
AdamW leaves are elementwise and need no communication when every array
keeps its parameter's layout. Orthogonalising each matrix once, on one device
(whole matrices per device, the Dion / distributed-Muon scheme), for ``n``
devices and a matrix of ``B`` bytes of which every device holds a fraction
``f`` in the parameters' layout (``f = 1`` replicated, ``1/8`` for ``fsdp`` and
``2-D`` here):

- in: the device that orthogonalises it already holds ``f B`` and must
  receive the other ``(1 − f) B``;
- out: every device must end with its ``f B`` of the result; the one that
  computed it has it, the other ``n − 1`` receive it: ``(n − 1) f B``.

Summed over the matrices (whichever device owns which; what devices send in
total they receive) and divided by ``n``, the average per device is ``Σ_B [(1 − f) B / n + f B (1 − 1/n)]``, that is
``2 (T/n)(1 − 1/n)`` for fully sharded parameters (``T`` the bytes of all
hidden matrices, ``T/n`` those a device owns: one all-to-all in, one out) and
``T (1 − 1/n)`` for replicated ones (the all-gather of results; computing
every matrix on every device instead costs no bytes and ``n`` times the
FLOPs). No scheme that orthogonalises each matrix on one device moves less;
Newton–Schulz on sharded matrices (sharded matmuls) communicates in every
iteration instead (Ahn et al. 2025, "Dion", §2). Padding a group of ``k`` matrices to a multiple of ``n`` (zero
matrices) moves ``⌈k/n⌉ n / k`` times the bytes; the default 8 layers make
every group a multiple of 8.

``optax.contrib.muon`` orthogonalises every 2-D leaf (embedding and head
too) in the leaf's own layout: replicated, every device computes every
matrix (no bytes, 8 times the FLOPs); sharded, XLA partitions each
Newton–Schulz matmul, with gathers and reductions in every iteration, under
``AxisType.Auto`` (under Explicit axes those matmuls are sharding type
errors). Its minimum is computed over its own matrices. Prints Markdown tables with the
machine and date, then each layout's collectives by kind and shape.
"""

from __future__ import annotations

import os

# XLA reads the flag when the CPU backend starts: before jax is imported.
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse
import collections
import dataclasses
import datetime
import math
import platform
import re
import time

import jax
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import matopt

KINDS = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all", "collective-permute")

_ITEMSIZE = {
  "pred": 1, "s4": 0.5, "u4": 0.5, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "s32": 4, "u32": 4, "s64": 8, "u64": 8,
  "f16": 2, "bf16": 2, "f32": 4, "f64": 8, "c64": 8, "c128": 16,
}  # fmt: skip
_ARRAY = re.compile(r"\b([a-z]+[0-9]+[a-z0-9]*|pred)\[([0-9,]*)\]")
# `%name = SHAPE op(operands), attributes`; SHAPE may be a tuple.
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%(\S+)\s*=\s*(.*?)\s+([a-z][a-z0-9-]*)\((.*)$")
_COMPUTATION = re.compile(r"^\s*(ENTRY\s+)?%(\S+)\s.*\{\s*$")


def _bytes(shape: str) -> float:
  """Bytes of an HLO shape (an array or a tuple of them); fp8 types count 1."""
  total = 0.0
  for dtype, dims in _ARRAY.findall(shape):
    size = _ITEMSIZE.get(dtype, 1 if dtype.startswith("f8") else None)
    if size is None:
      raise ValueError(f"unknown HLO element type {dtype!r} in {shape!r}")
    total += size * math.prod(int(d) for d in dims.split(",") if d)
  return total


def _group_size(attrs: str, devices: int) -> int:
  """The replica group size of a collective, from any of XLA's three forms."""
  match = re.search(r"replica_groups=mesh\[([^\]]*)\]\s*\{([^}]*)\}", attrs)
  if match:  # mesh['axis_0'=4,'axis_1'=2] {'axis_1'}: the named axes' product
    sizes = dict(re.findall(r"'([^']+)'=(\d+)", match.group(1)))
    return math.prod(int(sizes[a]) for a in re.findall(r"'([^']+)'", match.group(2)))
  match = re.search(r"replica_groups=\[(\d+),(\d+)\]<=", attrs)
  if match:  # iota form [groups, size]<=[...]
    return int(match.group(2))
  match = re.search(r"replica_groups=\{(\{[^}]*\})", attrs)
  if match:  # explicit lists {{0,1},{2,3}}
    return len(re.findall(r"\d+", match.group(1)))
  return devices  # replica_groups={} or absent: one group of every device


@dataclasses.dataclass(frozen=True)
class Collective:
  """One collective of a compiled module, with the bytes a device sends."""

  kind: str  # one of KINDS
  name: str
  shape: str  # the result shape as printed (per device)
  operand_bytes: float
  result_bytes: float
  group: int
  times: int  # executions per step (trip counts of enclosing loops)
  sent: float  # bytes per device per step (module docstring's formulas)


def collectives(hlo: str, devices: int) -> list[Collective]:
  """Every collective in ``hlo`` (``compiled.as_text()``) and the bytes it sends.

  Args:
    hlo: the text of a compiled, SPMD-partitioned module.
    devices: the number of devices the module runs on (for groups written
      ``{}`` and for collective-permute's average).

  Returns:
    One entry per collective instruction (``-done`` halves skipped).
  """
  shapes: dict[str, str] = {}
  body: dict[str, list[tuple[str, str, str, str]]] = collections.defaultdict(list)
  entry, current = None, None
  for line in hlo.splitlines():
    head = _COMPUTATION.match(line)
    if head and "=" not in line.split("{")[0]:
      current = head.group(2)
      entry = current if head.group(1) else entry
      continue
    match = _INSTRUCTION.match(line)
    if match and current is not None:
      name, shape, op, rest = match.groups()
      shapes[name] = shape
      body[current].append((name, shape, op, rest))
  # Executions per step of each computation: a while body runs its known trip
  # count per execution of its caller; fusions and calls once.
  times: dict[str, int] = collections.defaultdict(int)

  def visit(computation: str, count: int) -> None:
    times[computation] += count
    for _, _, _, rest in body.get(computation, ()):
      for attr, callee in re.findall(r"\b(body|condition|calls|to_apply|branch_computations)=\{?%([\w.\-]+)", rest):
        trips = re.search(r'"known_trip_count":\{"n":"(\d+)"', rest) if attr == "body" else None
        visit(callee, count * (int(trips.group(1)) if trips else 1))

  if entry is not None:
    visit(entry, 1)
  found = []
  for computation, instructions in body.items():
    for name, shape, op, rest in instructions:
      kind = op.removesuffix("-start")
      if kind not in KINDS:
        continue
      operands = re.findall(r"%([\w.\-]+)", rest.split(")")[0])
      operand_bytes = sum(_bytes(shapes.get(o, "")) for o in operands)
      group = _group_size(rest, devices)
      if op.endswith("-start"):  # the start's shape holds operands and results
        result_bytes = operand_bytes * group if kind == "all-gather" else operand_bytes
        result_bytes = operand_bytes / group if kind == "reduce-scatter" else result_bytes
      else:
        result_bytes = _bytes(shape)
      share = (group - 1) / group
      if kind == "all-gather":
        sent = result_bytes * share
      elif kind == "reduce-scatter":
        sent = operand_bytes * share
      elif kind == "all-reduce":
        sent = 2 * operand_bytes * share
      elif kind == "all-to-all":
        sent = operand_bytes * share
      else:
        pairs = re.search(r"source_target_pairs=\{(.*?)\}\}", rest)
        sources = len(re.findall(r"\{\d+,\d+", pairs.group(1) + "}")) if pairs else devices
        sent = operand_bytes * sources / devices
      count = max(times.get(computation, 0), 1)
      found.append(Collective(kind, name, shape, operand_bytes, result_bytes, group, count, sent * count))
  return found


# A block's kernels as (path, (fan_in, fan_out) in units of the width).
KERNELS = {
  "qkv": (("attn", "qkv"), (1, 3)),
  "attn_proj": (("attn", "proj"), (1, 1)),
  "fc": (("fc",), (1, 4)),
  "mlp_proj": (("proj",), (4, 1)),
}


def gpt_params(layers: int, width: int, vocab: int, *, kernels: tuple[str, ...] = tuple(KERNELS)) -> dict:
  """The ``gpt`` task's leaves (fused QKV, projections, MLP, norms, embedding,
  head), named as :func:`matopt.labels.by_role` expects; ``kernels`` picks
  which of :data:`KERNELS` each block has."""
  # NumPy: only the shapes matter, and eager jax.random compiles per shape.
  rng = np.random.default_rng(0)
  normal = lambda shape: (0.02 * rng.standard_normal(shape)).astype(np.float32)
  params = {"embed": {"embedding": normal((vocab, width))}, "head": {"kernel": normal((width, vocab))}}
  params["norm"] = {"scale": np.ones(width, np.float32)}
  for i in range(layers):
    block = {"norm1": {"scale": np.ones(width, np.float32)}, "norm2": {"scale": np.ones(width, np.float32)}}
    for name in kernels:
      path, (fan_in, fan_out) = KERNELS[name]
      node = block
      for part in path[:-1]:
        node = node.setdefault(part, {})
      node[path[-1]] = {"kernel": normal((fan_in * width, fan_out * width))}
    params[f"blocks_{i}"] = block
  return params


@dataclasses.dataclass(frozen=True)
class Layout:
  """A mesh and the spec of every 2-D parameter (vectors are replicated)."""

  name: str
  mesh_shape: tuple[int, ...]
  axes: tuple[str, ...]
  matrix_spec: P


LAYOUTS = (
  Layout("replicated", (8,), ("data",), P()),
  Layout("fsdp", (8,), ("data",), P("data")),
  Layout("2-D", (4, 2), ("data", "model"), P("data", "model")),
)


def minimum_bytes(matrices: list[jax.Array], devices: int, *, padded: bool = False) -> float:
  """The module docstring's minimum per device for orthogonalising each of
  ``matrices`` (placed arrays) once, on one device, in and out of their layout.

  With ``padded``, each group of ``k`` same-shape matrices that
  :mod:`matopt.sharding` spreads (``2k >= devices``) counts ``⌈k/n⌉ n / k``
  times: the zero matrices it pads the group with travel too.
  """
  groups: dict[tuple, list[jax.Array]] = collections.defaultdict(list)
  for x in matrices:
    groups[(x.shape, x.dtype)].append(x)
  total = 0.0
  for members in groups.values():
    group = 0.0
    for x in members:
      b = x.size * x.dtype.itemsize
      split = math.prod(
        x.sharding.mesh.shape[a] for s in x.sharding.spec if s for a in (s if isinstance(s, tuple) else (s,))
      )
      f = 1 / split  # the fraction of the matrix each device holds
      group += (1 - f) * b / devices + f * b * (1 - 1 / devices)
    k = len(members)
    total += group * (math.ceil(k / devices) * devices / k if padded and 2 * k >= devices else 1)
  return total


def measure(
  tx: optax.GradientTransformation,
  params: dict,
  layout: Layout,
  axis_type: jax.sharding.AxisType,
  orthogonalised: dict,
) -> dict:
  """Compiles ``tx.update`` on ``params`` in ``layout`` and counts its collectives;
  ``orthogonalised`` is a tree of bools like ``params``: the leaves ``tx``
  orthogonalises, for the minimum."""
  mesh = jax.make_mesh(layout.mesh_shape, layout.axes, axis_types=(axis_type,) * len(layout.axes))
  place = lambda x: jax.device_put(x, NamedSharding(mesh, layout.matrix_spec if x.ndim == 2 else P()))
  params = jax.tree.map(place, params)
  grads = params  # same shapes and layouts: only the program matters here
  state = matopt.sharding.init_state(tx, params)
  kwargs = {}
  if axis_type == jax.sharding.AxisType.Auto:
    # As `matopt run`: updates and state leave in the layouts they came in.
    kwargs["out_shardings"] = jax.tree.map(lambda x: x.sharding, (params, state))
  start = time.perf_counter()
  with jax.set_mesh(mesh):
    hlo = jax.jit(tx.update, **kwargs).lower(grads, state, params).compile().as_text()
  found = collectives(hlo, mesh.size)
  matrices = [x for x, o in zip(jax.tree.leaves(params), jax.tree.leaves(orthogonalised)) if o]
  return {
    "matrix_bytes": sum(x.size * x.dtype.itemsize for x in matrices),
    "sent": sum(c.sent for c in found),
    "minimum": minimum_bytes(matrices, mesh.size),
    "padded_minimum": minimum_bytes(matrices, mesh.size, padded=True),
    "collectives": found,
    "seconds": time.perf_counter() - start,
  }


def _mib(x: float) -> str:
  return f"{x / 2**20:.2f}"


def _summary(found: list[Collective]) -> list[str]:
  """One line per (kind, per-device shape, group, executions) with its count and bytes."""
  groups: dict[tuple, list[Collective]] = collections.defaultdict(list)
  for c in found:
    shape = re.sub(r"\{[0-9,]*\}", "", c.shape)  # drop layouts
    shape = re.sub(r"/\*index=\d+\*/", "", shape)
    groups[(c.kind, shape, c.group, c.times)].append(c)
  lines = []
  for (kind, shape, group, times), members in sorted(groups.items(), key=lambda kv: -sum(c.sent for c in kv[1])):
    shape = shape if len(shape) <= 70 else shape[:67] + "..."
    loop = f", ×{times} (loop)" if times > 1 else ""
    lines.append(
      f"  {len(members)} × {kind} {shape}, group {group}{loop}: {_mib(sum(c.sent for c in members))} MiB / device"
    )
  return lines


def main(argv: list[str] | None = None) -> list[dict]:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--layers", type=int, default=8)
  parser.add_argument("--width", type=int, default=256)
  parser.add_argument("--vocab", type=int, default=1024)
  parser.add_argument(
    "--quick",
    action="store_true",
    help="8 layers of only the (d, d) attention projection, width 16 (vocab 64), fsdp with Explicit axes only",
  )
  parser.add_argument("--no-optax", action="store_true", help="skip optax.contrib.muon")
  args = parser.parse_args(argv)
  if jax.device_count() < 8:
    raise SystemExit(f"needs 8 devices, found {jax.device_count()}: set XLA_FLAGS before jax is imported")
  layers, width, vocab = (8, 16, 64) if args.quick else (args.layers, args.width, args.vocab)
  # Quick: one group of matrices, one compilation of a few seconds.
  params = gpt_params(layers, width, vocab, kernels=("attn_proj",) if args.quick else tuple(KERNELS))
  # The leaves each optimizer orthogonalises: matopt's hidden matrices,
  # optax's every 2-D leaf.
  hidden = jax.tree.map(lambda role: role == "hidden", matopt.labels.by_role(params))
  two_d = jax.tree.map(lambda x: x.ndim == 2, params)
  explicit, auto = jax.sharding.AxisType.Explicit, jax.sharding.AxisType.Auto
  runs = []
  layouts = [LAYOUTS[1]] if args.quick else LAYOUTS
  for layout in layouts:
    for axis_type in [explicit] if args.quick else [explicit, auto]:
      runs.append(("matopt.muon", layout, axis_type, matopt.muon(0.02), hidden))
    if not (args.quick or args.no_optax):
      runs.append(("optax.contrib.muon", layout, auto, optax.contrib.muon(0.02), two_d))
      if layout.matrix_spec != P():
        # Under Explicit axes its sharded matmuls are type errors (a row of
        # the table); replicated, it compiles as under Auto, with no collectives.
        runs.append(("optax.contrib.muon", layout, explicit, optax.contrib.muon(0.02), two_d))
  rows = []
  for name, layout, axis_type, tx, orthogonalised in runs:
    try:
      result = measure(tx, params, layout, axis_type, orthogonalised)
    except Exception as error:  # a layout an optimizer cannot compile is a row of the table
      rows.append({"name": name, "layout": layout, "axis_type": axis_type, "error": type(error).__name__})
      continue
    rows.append({"name": name, "layout": layout, "axis_type": axis_type, **result})
  device = jax.devices()[0]
  n_params = sum(x.size for x in jax.tree.leaves(params))
  print(
    f"{datetime.date.today()} · {device.platform} × {jax.device_count()} · "
    f"{platform.processor() or platform.machine()} · jax {jax.__version__} · {layers} layers, width {width}, "
    f"vocab {vocab}: {n_params / 1e6:.2f}M float32 parameters\n"
  )
  print(
    "| optimizer | layout | axes | matrix MiB | measured MiB / device | minimum MiB / device | measured / minimum "
    "| padded minimum / minimum | collectives | compile s |"
  )
  print("|---|---|---|---|---|---|---|---|---|---|")
  for row in rows:
    axes = "Explicit" if row["axis_type"] == explicit else "Auto"
    mesh = "×".join(map(str, row["layout"].mesh_shape))
    where = f"{row['layout'].name} ({mesh}, {row['layout'].matrix_spec})"
    if "error" in row:
      print(f"| {row['name']} | {where} | {axes} | — | fails: {row['error']} | — | — | — | — | — |")
      continue
    ratio = row["sent"] / row["minimum"] if row["minimum"] else float("nan")
    # Padding is matopt's scheme; optax pads nothing.
    padding = f"{row['padded_minimum'] / row['minimum']:.2f}" if row["name"] == "matopt.muon" else "—"
    print(
      f"| {row['name']} | {where} | {axes} | {_mib(row['matrix_bytes'])} | {_mib(row['sent'])} "
      f"| {_mib(row['minimum'])} | {ratio:.2f} | {padding} | {len(row['collectives'])} | {row['seconds']:.1f} |"
    )
  print()
  for row in rows:
    if "error" not in row:
      axes = "Explicit" if row["axis_type"] == explicit else "Auto"
      print(f"{row['name']}, {row['layout'].name}, {axes}:")
      print("\n".join(_summary(row["collectives"])) or "  none")
  return rows


if __name__ == "__main__":
  main()
