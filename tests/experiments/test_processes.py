"""``matopt run`` as several JAX processes (:mod:`matopt.experiments.processes`).

The launcher is checked with stand-in commands (argument passing, a failing
process stopping the others, exit codes); ``matopt run CONFIG --processes 2``
is checked end to end against the same config on this process's 8 devices:
the same losses, files written once, by process 0.
"""

import json
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax
import numpy as np
import pytest
import yaml

from matopt import cli
from matopt.experiments import collect, processes, runner

TINY = {
  "task": "gpt",
  "steps": 4,
  "batch_size": 8,
  "eval_every": 2,
  "eval_batches": 1,
  "checkpoint_every": 2,
  "mesh": {"shape": [4, 2], "axes": ["data", "model"]},
  "model": {"layers": 1, "width": 16, "heads": 2, "seq_len": 16},
  "data": {"max_bytes": 50_000, "val_percent": 10},
  "optimizers": [{"name": "muon", "learning_rate": 0.03, "adam_learning_rate": 0.01}],
}

# A stand-in for `python -m matopt run ...`: records its arguments, then
# behaves as its process id and the BEHAVIOUR variable say.
STAND_IN = textwrap.dedent(
  """
  import json, os, sys, time
  args = sys.argv[1:]
  i = int(args[args.index("--process-id") + 1])
  out = os.environ["OUT"]
  with open(os.path.join(out, f"args_{i}.json"), "w") as f:
    json.dump({"args": args, "xla_flags": os.environ["XLA_FLAGS"], "platforms": os.environ["JAX_PLATFORMS"]}, f)
  behaviour = os.environ["BEHAVIOUR"]
  if behaviour == "one fails" and i == 1:
    print("something went wrong in process 1")
    sys.exit(3)
  if behaviour == "one fails":
    time.sleep(120)  # waits, as in a collective with the failed process
  """
)


def _write(path: Path, data) -> Path:
  path.write_text(yaml.safe_dump(data))
  return path


def test_child_env_sets_the_device_count_and_keeps_other_flags():
  env = processes.child_env(4, {"XLA_FLAGS": "--xla_foo=1 --xla_force_host_platform_device_count=8", "A": "b"})
  assert env["XLA_FLAGS"].split() == ["--xla_foo=1", "--xla_force_host_platform_device_count=4"]
  assert env["JAX_PLATFORMS"] == "cpu" and env["A"] == "b"
  assert processes.child_env(2, {"JAX_PLATFORMS": "cuda"})["JAX_PLATFORMS"] == "cuda"  # the user's choice stays


def test_launch_passes_each_process_its_index(tmp_path, monkeypatch):
  script = tmp_path / "stand_in.py"
  script.write_text(STAND_IN)
  monkeypatch.setenv("OUT", str(tmp_path))
  monkeypatch.setenv("BEHAVIOUR", "succeed")
  code = processes.launch(
    [sys.executable, str(script), "run", "x.yaml"], processes=3, local_devices=2, log_dir=tmp_path
  )
  assert code == 0
  seen = [json.loads((tmp_path / f"args_{i}.json").read_text()) for i in range(3)]
  coordinators = {s["args"][s["args"].index("--coordinator") + 1] for s in seen}
  assert len(coordinators) == 1 and coordinators.pop().startswith("127.0.0.1:")
  for i, s in enumerate(seen):
    assert s["args"][:2] == ["run", "x.yaml"]
    assert s["args"][s["args"].index("--process-id") + 1] == str(i)
    assert s["args"][s["args"].index("--num-processes") + 1] == "3"
    assert s["xla_flags"].endswith("--xla_force_host_platform_device_count=2") and s["platforms"] == "cpu"
  assert sorted(p.name for p in tmp_path.glob("process_*.log")) == ["process_1.log", "process_2.log"]


def test_launch_stops_the_others_when_one_fails(tmp_path, monkeypatch, capsys):
  script = tmp_path / "stand_in.py"
  script.write_text(STAND_IN)
  monkeypatch.setenv("OUT", str(tmp_path))
  monkeypatch.setenv("BEHAVIOUR", "one fails")
  start = time.monotonic()
  code = processes.launch([sys.executable, str(script)], processes=3, local_devices=1, log_dir=tmp_path)
  assert code == 3
  assert time.monotonic() - start < 60  # not the 120 s the others would wait
  err = capsys.readouterr().err
  assert "process 1 exited with code 3" in err and "something went wrong in process 1" in err
  assert "process 1 of 3 failed (exit code 3); stopped the others" in err


def test_without_processes():
  argv = ["run", "c.yaml", "--processes", "2", "--steps", "3", "--processes=4", "--quiet"]
  assert cli._without_processes(argv) == ["run", "c.yaml", "--steps", "3", "--quiet"]


@pytest.mark.parametrize(
  "change, flags, message",
  [
    ({}, ["--processes", "3"], r"--processes 3 does not divide config.mesh.shape \[4, 2\] \(8 devices\)"),
    ({"mesh": None}, ["--processes", "2"], r"--processes needs a config with a mesh"),
    ({}, ["--processes", "0"], r"--processes must be a positive number"),
    ({}, ["--processes", "2", "--process-id", "0"], r"--processes starts the processes itself"),
  ],
)
def test_run_refuses_bad_process_flags(tmp_path, capsys, change, flags, message):
  config = _write(tmp_path / "c.yaml", {k: v for k, v in {**TINY, **change}.items() if v is not None})
  assert cli.main(["run", str(config), "--out", str(tmp_path / "out"), *flags]) == 2
  assert re.search(message, capsys.readouterr().err)
  assert not (tmp_path / "out").exists()  # refused before anything started


@pytest.mark.skipif(jax.device_count() != 8, reason="needs 8 (host) devices")
def test_run_in_two_processes_equals_one(tmp_path):
  """`--processes 2` (4 CPU devices each, one (4, 2) mesh) against this process's 8 devices."""
  config_path = _write(tmp_path / "tiny.yaml", TINY)
  two = tmp_path / "two"
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_COMPILATION_CACHE_DIR")}
  done = subprocess.run(
    [sys.executable, "-m", "matopt", "run", str(config_path), "--out", str(two), "--quiet", "--processes", "2"],
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  logs = (two / "processes" / "process_1.log").read_text() if (two / "processes" / "process_1.log").exists() else ""
  assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}\nprocess 1:\n{logs[-3000:]}"
  assert "| muon |" in done.stdout  # process 0 printed the table
  assert "# Results" not in logs  # and process 1 did not

  one = tmp_path / "one"
  runner.run(runner.load(config_path), one, progress=False)
  run = Path("runs/muon/lr_0.03/seed_0")
  got, want = collect.read_json(two / run / "result.json"), collect.read_json(one / run / "result.json")
  for key in ("train", "val"):
    np.testing.assert_allclose(
      [h[2] for h in got["history"][key]], [h[2] for h in want["history"][key]], rtol=1e-5, err_msg=key
    )
  assert [h[0] for h in got["history"]["val"]] == [2, 4]
  # One writer: each step once in the metrics log; the machine says how it ran.
  lines = [json.loads(line) for line in (two / run / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in lines if "train_loss" in r] == [1, 2, 3, 4]
  assert "x8 in 2 processes" in (two / "results.md").read_text()
  assert (two / run / "checkpoints").is_dir()


def test_distributed_without_a_cluster_is_a_clear_error(tmp_path, capsys):
  config = _write(tmp_path / "c.yaml", TINY)
  assert cli.main(["run", str(config), "--out", str(tmp_path / "out"), "--distributed"]) == 2
  err = capsys.readouterr().err
  assert "jax.distributed.initialize failed" in err and "--coordinator, --num-processes and --process-id" in err
  assert not (tmp_path / "out").exists()
