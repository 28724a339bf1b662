"""The main job on a mesh of the 8 host CPU devices: ``mesh:`` checked at
load, the same losses as one device, checkpoints that resume on the mesh."""

import json
import re
from pathlib import Path

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from matopt.experiments import config as config_lib
from matopt.experiments import optimizers, parallel, runner, tasks, train
from matopt.experiments.config import ConfigError
from tests.experiments.test_config import _parse, _with

pytestmark = pytest.mark.skipif(jax.device_count() != 8, reason="needs 8 (host) devices")

MESH_CONFIG = Path(__file__).parents[2] / "configs" / "gpt_mesh.yaml"
TINY = {
  "task": "gpt",
  "steps": 4,
  "batch_size": 8,
  "eval_batches": 1,
  "checkpoint_every": 2,
  "model": {"layers": 1, "width": 16, "heads": 2, "seq_len": 16},
  "data": {"max_bytes": 50_000, "val_percent": 10},
}


@pytest.mark.parametrize(
  "mesh, match",
  [
    (
      {"shape": [4, 2], "axes": ["data"]},
      r"config.mesh: shape \[4, 2\] and axes \['data'\] must be non-empty lists of the same length",
    ),
    ({"shape": [], "axes": []}, "must be non-empty lists of the same length"),
    (
      {"shape": [4, 4], "axes": ["data", "model"]},
      (
        r"config.mesh.shape \[4, 4\] holds 16 devices, but JAX sees 8 \(cpu\); .*"
        r"--xla_force_host_platform_device_count=16"
      ),
    ),
    ({"shape": [8, 0], "axes": ["data", "model"]}, r"config.mesh.shape\[1\] must be > 0"),
    ({"shape": [2, 4], "axes": ["data", "data"]}, r"config.mesh.axes must be distinct non-empty names"),
    (
      {"shape": [8], "axes": ["data"]},
      r"config.batch_size 2 must be a multiple of config.mesh.shape\[0\] = 8 .*'data'",
    ),
    ({"shape": "4x2", "axes": ["data", "model"]}, r"config.mesh.shape must be list of int, got str '4x2'"),
    ({"shape": [8], "axes": ["data"], "types": "auto"}, r"config.mesh: unknown key\(s\) \['types'\]"),
    ({"shape": [8]}, r"config.mesh: missing required key\(s\) \['axes'\]"),
    ([8], "config.mesh must be a mapping"),
  ],
)
def test_bad_mesh(mesh, match):
  with pytest.raises(ConfigError, match=match):
    _parse(_with(mesh=mesh))


def test_mesh_is_kept_and_absent_means_one_device():
  config = _parse(_with(batch_size=4, mesh={"shape": [2, 4], "axes": ["data", "model"]}))
  assert config.mesh == config_lib.MeshSpec((2, 4), ("data", "model"))
  assert config_lib.to_dict(config)["mesh"] == {"shape": (2, 4), "axes": ("data", "model")}
  plain = _parse(_with())
  # No "mesh" in config.json: output directories written before the key existed still resume.
  assert plain.mesh is None and "mesh" not in config_lib.to_dict(plain)


def test_layout():
  mesh = parallel.make_mesh(config_lib.MeshSpec((4, 2), ("data", "model")))
  spec = lambda shape: parallel.param_sharding(np.zeros(shape), mesh).spec
  assert spec((64, 192)) == P("data", "model")
  assert spec((3, 3, 16, 32)) == P(None, None, "data", "model")
  assert spec((6, 16)) == P(None, "model")  # 6 rows do not split 4 ways
  assert spec((16, 3)) == P("data")
  assert spec((64,)) == spec(()) == P()
  batch = parallel.place_batch((np.zeros((8, 5)), np.zeros((8,), np.int32)), mesh)
  assert [x.sharding.spec for x in batch] == [P("data"), P("data")]
  assert parallel.place_batch(np.zeros((6, 5)), mesh).sharding.spec == P()  # eval split of another size


def _history(out):
  (path,) = (out / "runs").glob("*/*/seed_*/result.json")
  return json.loads(path.read_text())


@pytest.mark.parametrize(
  "optimizer, mesh",
  [
    (
      {"name": "muon", "learning_rate": 0.02, "adam_learning_rate": 0.003},
      {"shape": [4, 2], "axes": ["data", "model"]},
    ),
    # Shampoo's default eps (1e-12) makes its roots amplify float rounding on
    # this tiny model: perturbing the initial weights by 1e-7 moves the
    # one-device loss after one step by 7e-4. A larger eps conditions them.
    ({"name": "shampoo", "learning_rate": 0.01, "eps": 1e-4}, {"shape": [8], "axes": ["data"]}),
    # QK-clip's logits come from the sharded attention and clip sharded kernels.
    (
      {"name": "muon_clip", "learning_rate": 0.02, "tau": 1.0, "adam_learning_rate": 0.003},
      {"shape": [4, 2], "axes": ["data", "model"]},
    ),
  ],
  ids=["muon-4x2", "shampoo-8", "muon_clip-4x2"],
)
def test_mesh_run_matches_one_device_and_resumes(tmp_path, optimizer, mesh):
  raw = {**TINY, "optimizers": [optimizer]}
  single = runner.run(_parse(raw), tmp_path / "single", progress=False)
  config = _parse({**raw, "mesh": mesh})
  # Interrupted after the first checkpoint, then resumed from it on the mesh.
  assert runner.run(config, tmp_path / "mesh", progress=False, stop_after=2) == []
  sharded = runner.run(config, tmp_path / "mesh", progress=False)
  want, got = _history(tmp_path / "single"), _history(tmp_path / "mesh")
  assert [h[0] for h in got["history"]["train"]] == [1, 2, 3, 4]
  np.testing.assert_allclose(
    [h[2] for h in got["history"]["train"]], [h[2] for h in want["history"]["train"]], rtol=1e-4
  )
  np.testing.assert_allclose(sharded[0]["final_val_loss"], single[0]["final_val_loss"], rtol=1e-4)
  if "max_logit" in want["history"]:
    np.testing.assert_allclose(got["history"]["max_logit"], want["history"]["max_logit"], rtol=1e-4)


def test_shipped_mesh_config_loads_and_runs(tmp_path):
  config = runner.load(MESH_CONFIG)
  assert config.mesh == config_lib.MeshSpec((4, 2), ("data", "model"))
  assert {s.optimizer for s in config.optimizers} >= {"adamw", "muon", "shampoo", "soap"}
  (record,) = runner.run(runner.override(config, steps=1, optimizers=["muon"]), tmp_path, progress=False)
  assert record["steps"] == 1 and np.isfinite(record["final_val_loss"])


def test_the_update_exchanges_blocks_not_whole_stacks():
  # The model runs with Auto axes, the optimizer update with Explicit ones
  # (train._explicit_update), so matopt.sharding sees the parameters'
  # P("data", "model") layout and exchanges matrix blocks with all-to-alls.
  # Under Auto axes XLA gathered each whole (8, m, n) stack onto every device.
  # 4 layers: each group of 4 same-shape hidden matrices is spread over the 8 devices.
  from tests.benchmarks.test_comm_bytes import comm_bytes

  raw = {**TINY, "model": {**TINY["model"], "layers": 4}, "optimizers": [{"name": "muon", "learning_rate": 0.02}]}
  config = _parse({**raw, "mesh": {"shape": [4, 2], "axes": ["data", "model"]}})
  task, mesh = tasks.TASKS["gpt"](config), parallel.make_mesh(config.mesh)
  tx = optimizers.build("muon", 0.02, {}, schedule=config.schedule, steps=4)
  step, run = train._init(task, tx, 0, mesh, {}, None)
  with jax.set_mesh(mesh):
    compiled = step.train.lower(run.params, run.opt_state, step.place(task.train_batch(0, 0)), np.int32(0)).compile()
  found = comm_bytes.collectives(compiled.as_text(), mesh.size)
  stacks = {f"f32[8,{m},{n}]" for m, n in [(16, 48), (16, 16), (16, 64), (64, 16)]}
  assert not [c.shape for c in found if re.sub(r"\{[0-9,]*\}", "", c.shape) in stacks]
  assert any(c.kind == "all-to-all" for c in found)
