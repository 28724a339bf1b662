"""benchmarks/comm_bytes.py: its HLO collective parser counts the bytes of
hand-made collectives on the 8 host devices, and its quick mode runs."""

import importlib.util
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

pytestmark = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (host) devices")

_PATH = pathlib.Path(__file__).parents[2] / "benchmarks" / "comm_bytes.py"
# benchmarks/ is scripts, not a package: load the file as a module (registered
# first, as dataclasses look their module up).
_SPEC = importlib.util.spec_from_file_location("benchmarks_comm_bytes", _PATH)
comm_bytes = sys.modules.setdefault(_SPEC.name, importlib.util.module_from_spec(_SPEC))
_SPEC.loader.exec_module(comm_bytes)


def _collectives(body, x, mesh, in_spec, out_spec):
  """The parsed collectives of ``body`` under ``shard_map`` on ``x``."""
  fn = jax.shard_map(body, mesh=mesh, in_specs=in_spec, out_specs=out_spec, check_vma=False)
  x = jax.device_put(x, NamedSharding(mesh, in_spec))
  return comm_bytes.collectives(jax.jit(fn).lower(x).compile().as_text(), mesh.size)


def test_all_gather_and_all_to_all_bytes():
  mesh = jax.make_mesh((8,), ("data",))
  x = jnp.zeros((8 * 4, 16), jnp.float32)  # 4 × 16 float32 = 256 bytes a device
  gathered = _collectives(lambda b: jax.lax.all_gather(b, "data", tiled=True), x, mesh, P("data"), P())
  assert [(c.kind, c.group, c.operand_bytes, c.result_bytes) for c in gathered] == [("all-gather", 8, 256, 2048)]
  assert gathered[0].sent == 2048 * 7 / 8  # each device receives the 7 blocks it lacks
  x = jnp.zeros((8, 8, 16), jnp.float32)  # (1, 8, 16) a device: 512 bytes
  moved = _collectives(lambda b: jax.lax.all_to_all(b, "data", 1, 0, tiled=True), x, mesh, P("data"), P("data"))
  assert [c.kind for c in moved] == ["all-to-all"]
  assert (moved[0].operand_bytes, moved[0].sent) == (512, 512 * 7 / 8)


def test_all_reduce_on_a_mesh_axis_and_collective_permute_bytes():
  mesh = jax.make_mesh((4, 2), ("data", "model"))
  x = jnp.zeros((4 * 8, 2 * 8), jnp.float32)  # (8, 8) a device: 256 bytes
  reduced = _collectives(lambda b: jax.lax.psum(b, "model"), x, mesh, P("data", "model"), P("data", "model"))
  assert [(c.kind, c.group) for c in reduced] == [("all-reduce", 2)]
  assert reduced[0].sent == 2 * 256 * 1 / 2
  mesh = jax.make_mesh((8,), ("data",))
  shift = lambda b: jax.lax.ppermute(b, "data", [(i, (i + 1) % 8) for i in range(7)])  # 7 sources of 8
  permuted = _collectives(shift, jnp.zeros((8 * 8, 8), jnp.float32), mesh, P("data"), P("data"))
  assert [c.kind for c in permuted] == ["collective-permute"]
  assert permuted[0].sent == 256 * 7 / 8


def test_a_collective_in_a_loop_counts_each_trip():
  mesh = jax.make_mesh((8,), ("data",))
  x = jnp.ones((8 * 4, 4), jnp.float32)  # 64 bytes a device

  def body(b):
    return jax.lax.fori_loop(0, 3, lambda i, c: jax.lax.psum(c, "data") * 0.5, b)

  # One all-reduce in a while body XLA knows runs 3 times.
  (reduce,) = _collectives(body, x, mesh, P("data"), P("data"))
  assert (reduce.kind, reduce.times, reduce.sent) == ("all-reduce", 3, 3 * 2 * 64 * 7 / 8)


@pytest.mark.parametrize(
  ("attributes", "size"),
  [
    ("replica_groups=mesh['axis_0'=4,'axis_1'=2] {'axis_0'}, dimensions={0}", 4),
    ("replica_groups=mesh['axis_0'=1,'axis_1'=4,'axis_2'=2] {'axis_1','axis_2'}", 8),
    ("replica_groups=[2,4]<=[4,2]T(1,0), dimensions={0}", 4),
    ("replica_groups={{0,1},{2,3},{4,5},{6,7}}, to_apply=%add", 2),
    ("replica_groups={}, to_apply=%add", 8),
  ],
)
def test_replica_group_forms(attributes, size):
  assert comm_bytes._group_size(attributes, 8) == size


def test_minimum_counts_each_layout_and_the_padding():
  mesh = jax.make_mesh((8,), ("data",))
  place = lambda spec: [jax.device_put(np.zeros((8, 16), np.float32), NamedSharding(mesh, spec)) for _ in range(4)]
  b = 8 * 16 * 4  # bytes of one matrix
  # Sharded: 7/8 of each matrix in to its owner, 1/8 out to each of 7 others.
  sharded = place(P("data"))
  assert comm_bytes.minimum_bytes(sharded, 8) == 4 * 2 * (b / 8) * (7 / 8)
  # Replicated: nothing in, every other device receives the result.
  assert comm_bytes.minimum_bytes(place(P()), 8) == 4 * b * 7 / 8
  # 4 matrices spread over 8 devices travel with 4 zero matrices.
  assert comm_bytes.minimum_bytes(sharded, 8, padded=True) == 2 * comm_bytes.minimum_bytes(sharded, 8)


def test_quick_mode_moves_exactly_the_minimum(capsys):
  (row,) = comm_bytes.main(["--quick"])
  assert "| matopt.muon | fsdp" in capsys.readouterr().out
  # One group of 8 fully sharded matrices: one all-to-all into the stack and
  # one back, and nothing else.
  assert [c.kind for c in row["collectives"]] == ["all-to-all"] * 2
  assert row["padded_minimum"] == row["minimum"]
  assert row["sent"] == pytest.approx(row["minimum"], rel=1e-9)


@pytest.mark.parametrize("layout", [0, 2], ids=["replicated", "2-D"])
def test_other_layouts_move_exactly_the_minimum(layout):
  # Explicit axes: one shard_map exchanges the blocks each device holds of
  # the others' matrices (replicated: a local slice in, an all-gather out;
  # P("data", "model") on a (4, 2) mesh: one all-to-all over both axes each
  # way). Resharding the stack one mesh axis at a time cost 1.43× on the
  # 2-D layout, and the whole stack onto every device 8× before that.
  import matopt

  params = comm_bytes.gpt_params(8, 16, 64, kernels=("attn_proj",))
  hidden = jax.tree.map(lambda role: role == "hidden", matopt.labels.by_role(params))
  row = comm_bytes.measure(
    matopt.muon(0.02), params, comm_bytes.LAYOUTS[layout], jax.sharding.AxisType.Explicit, hidden
  )
  assert [c.kind for c in row["collectives"]] == (["all-gather"] if layout == 0 else ["all-to-all"] * 2)
  assert row["sent"] == pytest.approx(row["minimum"], rel=1e-9)
