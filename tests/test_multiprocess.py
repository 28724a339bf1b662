"""matopt's sharded optimizers across several JAX processes on one machine.

tests/multiprocess/worker.py runs as N processes on localhost, joined by
``jax.distributed`` (CPU devices, gloo collectives): each builds the global
mesh over all N·K devices, places the same parameters and gradients (from
a seed) as global arrays and takes two steps of Muon, Scion, Shampoo and
SOAP the README's way (``matopt.sharding.init_state``, ``jax.jit(tx.update)``
under ``jax.set_mesh``). This process compares what they wrote with the
same steps on one of its own devices: equal to float32 round-off, fewer
FLOPs per device, the state's shardings kept and no second compilation. A
checkpoint that all processes write (orbax, through the main job's
``Checkpoints``) restores in a fresh set of processes and the next step
equals the uninterrupted one bit for bit.
"""

import functools
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.multiprocess import steps

WORKER = pathlib.Path(__file__).parent / "multiprocess" / "worker.py"
# Seconds for all processes of one run together: starting jax.distributed
# and compiling the four optimizers' steps took 40–90 s on 2 shared cores.
TIMEOUT = 240

# The relative error of each update against one device's: sums in another
# order, through Newton–Schulz or roots and eigenbases (the tolerances of
# tests/test_sharding_recipe.py).
TOLERANCE = {"muon": 1e-4, "scion": 1e-4, "shampoo": 1e-3, "soap": 1e-3}

# Saved after the first step of the 2-process run and restored in a fresh
# pair of processes (SOAP's richer state passes too, for 15 s more).
CHECKPOINTED = "muon"


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _workers(
  out: pathlib.Path, processes: int, local_devices: int, optimizers, *extra: str, meanwhile=None
) -> list[dict]:
  """Runs the worker as ``processes`` processes and returns each one's
  results (its JSON, with its arrays under "arrays"); calls ``meanwhile()``
  while they run."""
  out.mkdir(parents=True, exist_ok=True)
  port = _free_port()
  # The workers make their own devices (XLA_FLAGS); the compilation cache of
  # this run is left to this process.
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_COMPILATION_CACHE_DIR")}
  deadline = time.monotonic() + TIMEOUT
  procs = []
  try:
    for i in range(processes):
      command = [sys.executable, str(WORKER), f"--process-id={i}", f"--processes={processes}"]
      command += [f"--local-devices={local_devices}", f"--port={port}", f"--out={out}"]
      command += [f"--optimizers={','.join(optimizers)}", *extra]
      with open(out / f"log_{i}.txt", "w") as log:
        procs.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env))
    if meanwhile is not None:
      meanwhile()
    # Until all are done, one fails (the others would wait for it in a
    # collective) or time is up.
    while time.monotonic() < deadline and any(p.poll() is None for p in procs):
      if any(p.poll() for p in procs):
        break
      time.sleep(0.2)
  finally:
    for p in procs:  # only the processes started here
      if p.poll() is None:
        p.kill()
        p.wait()
  failed = [i for i, p in enumerate(procs) if p.returncode != 0]
  if failed:
    why = {-signal.SIGKILL: "killed: another failed or time ran out"}
    logs = "\n".join(
      f"--- process {i} (exit {procs[i].returncode}, {why.get(procs[i].returncode, 'failed')}):\n{_tail(out / f'log_{i}.txt')}"
      for i in failed
    )
    pytest.fail(f"worker processes {failed} of {processes} failed (time limit {TIMEOUT} s):\n{logs}")
  results = []
  for i in range(processes):
    result = json.loads((out / f"result_{i}.json").read_text())
    with np.load(out / f"result_{i}.npz") as arrays:
      result["arrays"] = dict(arrays)
    results.append(result)
  return results


def _tail(log: pathlib.Path, lines: int = 30) -> str:
  # XLA's partitioner warnings are long, gloo's connection lines many: leave them out.
  noise = ("spmd_partitioner", "[Gloo]")
  return "\n".join([line for line in log.read_text().splitlines() if not any(n in line for n in noise)][-lines:])


def _relative_error(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


@functools.cache
def _one_device(name: str) -> dict:
  """The optimizer's steps on one device of this process (no mesh)."""
  return steps.run(name)


def _check_run(results: list[dict], processes: int, local_devices: int, optimizers) -> None:
  """The workers' results against one device's steps in this process."""
  # One global mesh: every process's devices, its first axis across processes.
  for i, result in enumerate(results):
    assert (result["process_index"], result["process_count"]) == (i, processes)
    assert (result["device_count"], result["local_device_count"]) == (processes * local_devices, local_devices)
    assert result["mesh_processes"] == [[p] * local_devices for p in range(processes)]
  # Every process gathered the same global arrays.
  got = results[0]["arrays"]
  for other in results[1:]:
    assert other["arrays"].keys() == got.keys()
    for key, x in got.items():
      np.testing.assert_array_equal(other["arrays"][key], x, err_msg=key)
  for name in optimizers:
    meta, ref = results[0]["optimizers"][name], _one_device(name)
    # Not a comparison of zeros (SOAP's first step is zero but for weight
    # decay: it only computes bases).
    assert all(np.linalg.norm(u) > 1e-3 for u in ref["updates"][-1]), name
    for t in range(steps.STEPS):
      for i, (update, params) in enumerate(zip(ref["updates"][t], ref["params"][t])):
        where = f"{name}, step {t + 1}, leaf {i}"
        assert _relative_error(got[f"{name}/updates{t + 1}/{i}"], update) < TOLERANCE[name], where
        np.testing.assert_allclose(got[f"{name}/params{t + 1}/{i}"], params, atol=1e-5, err_msg=where)
    # The state too (SOAP's eigenvectors up to sign: compare |Q|).
    for i, x in enumerate(ref["state"]):
      assert _relative_error(np.abs(got[f"{name}/state/{i}"]), np.abs(x)) < 10 * TOLERANCE[name], (name, i)
    # Each device its share of the matrix work: the groups of 4 matrices are
    # padded to 8, one matrix per device, 1/4 of one device's work (the lone
    # wide matrix and the elementwise work are split over all 8): 0.18–0.22.
    assert meta["flops"] < 0.3 * ref["flops"], (name, meta["flops"], ref["flops"])
    # init_state placed the state as jit returns it: the same shardings after
    # each step, and the second step reuses the first one's executable.
    assert meta["state_kept"] and meta["updates_in_param_layout"], name
    assert all(specs == meta["state_specs"][0] for specs in meta["state_specs"]), name
    assert "P('data', 'model')" in meta["state_specs"][0], name  # momentum in its parameter's layout
    assert meta["cache_sizes"] == [1, 1], name
    if name in ("shampoo", "soap"):  # preconditioners split by rows over all devices
      assert any(spec.endswith("('data', 'model'), None)") for spec in meta["state_specs"][0]), name


def _run(out: pathlib.Path, processes: int, local_devices: int, optimizers, *extra: str) -> list[dict]:
  # The one-device references are computed while the workers start and compile.
  meanwhile = lambda: [_one_device(name) for name in optimizers]
  return _workers(out, processes, local_devices, optimizers, *extra, meanwhile=meanwhile)


# One test per set of processes (each its own xdist worker's, none waiting
# for another's run): the checkpoint is the 2-process run's.
def test_two_processes_equal_one_device_and_resume_from_their_checkpoint_bit_for_bit(tmp_path):
  checkpoint = f"--checkpoint={tmp_path / 'checkpoints'}"
  results = _run(tmp_path / "run", 2, 4, tuple(steps.OPTIMIZERS), checkpoint, f"--checkpointed={CHECKPOINTED}")
  _check_run(results, 2, 4, steps.OPTIMIZERS)
  # Written by both processes after the first step, restored by a fresh pair.
  assert (tmp_path / "checkpoints" / CHECKPOINTED).is_dir()
  restored = _workers(tmp_path / "restored", 2, 4, (CHECKPOINTED,), checkpoint, "--restore")
  got, want = restored[0]["arrays"], results[0]["arrays"]
  for key, x in got.items():  # both processes restored the same global arrays
    np.testing.assert_array_equal(restored[1]["arrays"][key], x, err_msg=key)
  # Only the last step was taken: its params, updates and the final state.
  assert got and all(f"/params{steps.STEPS}/" in k or f"/updates{steps.STEPS}/" in k or "/state/" in k for k in got)
  for key, x in got.items():
    np.testing.assert_array_equal(x, want[key], err_msg=key)
  meta, before = restored[0]["optimizers"][CHECKPOINTED], results[0]["optimizers"][CHECKPOINTED]
  # Restored in the layouts init_state gives, and compiled once.
  assert meta["state_specs"] == before["state_specs"][:2]
  assert meta["state_kept"] and meta["cache_sizes"] == [0, 1]


def test_four_processes_equal_one_device(tmp_path):
  # The mesh's first axis across four processes (Muon only: four processes
  # compiling on two cores are slow).
  _check_run(_run(tmp_path, 4, 2, ("muon",)), 4, 2, ("muon",))
