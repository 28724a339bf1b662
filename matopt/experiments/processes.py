"""The main job as several JAX processes: one per host, or N on one machine.

Beyond one host, JAX runs one process per host, joined by
``jax.distributed.initialize`` (the coordinator's address, the number of
processes and each one's index) over a mesh of every process's devices:
every process runs the same program on its own devices and XLA's
collectives cross processes ("multi-controller" JAX). ``matopt run`` joins
such a run with

    matopt run CONFIG --coordinator HOST:PORT --num-processes N --process-id I

started on each host (``I`` from 0 to ``N - 1``; ``HOST:PORT`` a free port of
process 0's host, the same for all), or with ``--distributed`` alone where JAX
finds the three itself (SLURM, Open MPI, Cloud TPU). On one machine

    matopt run CONFIG --processes N

starts the ``N`` processes itself (:func:`launch`), each with ``mesh size / N``
CPU devices: the same program as a multi-host run, rehearsed on one machine.

What every process does:

- builds the same model and optimizer from the same seed and places its own
  shards of the parameters, the optimizer state and each batch. Batches are
  functions of the step and the seed, so each process draws the global batch
  and keeps the rows its devices hold; no data moves between processes
  (:mod:`matopt.experiments.parallel`);
- runs every step, and saves and restores its shards of each checkpoint
  (orbax). ``--out`` must therefore be a directory every process sees: one
  machine, or a filesystem the hosts share.

What only process 0 does: it writes the files (``config.json``,
``meta.json``, ``metrics.jsonl``, the TensorBoard events, each run's
``result.json``, the results and plots) and shows progress. The others wait
for it at a barrier after each write (:func:`on_main`), then read the same
files, so every process makes the same decisions: which runs are finished,
and where a learning-rate grid extends.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"


def initialize(
  *, coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None
) -> None:
  """``jax.distributed.initialize`` with CPU collectives; before anything starts a JAX backend.

  Each argument left None is found by JAX from the environment (SLURM, Open
  MPI, Cloud TPU), as ``jax.distributed.initialize`` does.
  """
  import jax

  # CPU devices of different processes exchange data through gloo. It is
  # jax 0.10's default; set so that an older or newer default cannot leave
  # the CPU client without cross-process collectives. Accelerators ignore it.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes, process_id=process_id)


def is_main() -> bool:
  """Whether this is process 0, the one that writes files (true without ``jax.distributed``)."""
  import jax

  return jax.process_index() == 0


def barrier(name: str) -> None:
  """Wait until every process got here (nothing to wait for in one process).

  ``name`` must be the same in every process; JAX checks it, so processes
  that took different paths fail here instead of deadlocking later.
  """
  import jax

  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(name)


def on_main(fn: Callable[..., Any], *args: Any, name: str, **kwargs: Any) -> Any:
  """``fn(*args, **kwargs)`` in process 0 only, then :func:`barrier`: when any
  process returns, process 0's writes are done. Other processes get None."""
  result = fn(*args, **kwargs) if is_main() else None
  barrier(name)
  return result


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def child_env(local_devices: int, environ: dict[str, str] | None = None) -> dict[str, str]:
  """The environment of one launched process: ``local_devices`` CPU devices.

  ``XLA_FLAGS`` keeps its other flags; ``JAX_PLATFORMS`` defaults to ``cpu``,
  since N processes that each took every accelerator of the machine would
  fight over them (set it to run on accelerators, one process per host, as
  the module docstring says).
  """
  env = dict(os.environ if environ is None else environ)
  flags = re.sub(rf"{DEVICE_COUNT_FLAG}=\S*", "", env.get("XLA_FLAGS", "")).split()
  env["XLA_FLAGS"] = " ".join([*flags, f"{DEVICE_COUNT_FLAG}={local_devices}"])
  env.setdefault("JAX_PLATFORMS", "cpu")
  return env


def launch(
  command: Sequence[str],
  *,
  processes: int,
  local_devices: int,
  log_dir: Path,
  poll_seconds: float = 0.2,
  grace_seconds: float = 3.0,
) -> int:
  """Run ``command`` as ``processes`` JAX processes on this machine; their exit code.

  Process ``i`` runs ``command + ["--coordinator", "127.0.0.1:PORT",
  "--num-processes", N, "--process-id", i]`` with :func:`child_env`. Process 0
  writes to this terminal, the others to ``log_dir/process_<i>.log``. When one
  fails, the others would wait for it in a collective until JAX's timeouts,
  so they are stopped (SIGINT, then SIGKILL after ``grace_seconds``) and
  the failure's code is returned, with the end of its log on stderr. On
  Ctrl-C or SIGTERM all are stopped (exit code 130 or 143); a checkpointed
  run then continues when the same command runs again. Only the processes
  started here are signalled.
  """
  log_dir.mkdir(parents=True, exist_ok=True)
  coordinator = f"127.0.0.1:{_free_port()}"
  env = child_env(local_devices)
  procs: list[subprocess.Popen] = []
  logs: list[Path | None] = []
  # A SIGTERM to the launcher (a job scheduler's, `timeout`'s) stops the
  # processes too, instead of leaving them to wait for each other.
  previous = (
    signal.signal(signal.SIGTERM, _terminated) if threading.current_thread() is threading.main_thread() else None
  )
  try:
    for i in range(processes):
      argv = [*command, "--coordinator", coordinator, "--num-processes", str(processes), "--process-id", str(i)]
      if i == 0:
        procs.append(subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL))
        logs.append(None)
        continue
      path = log_dir / f"process_{i}.log"
      with path.open("w") as log:
        procs.append(subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT))
      logs.append(path)
    while True:
      codes = [p.poll() for p in procs]
      failed = [i for i, code in enumerate(codes) if code not in (None, 0)]
      if failed or all(code == 0 for code in codes):
        break
      time.sleep(poll_seconds)
  except (KeyboardInterrupt, _Terminated) as e:
    _stop(procs, grace_seconds)
    return 143 if isinstance(e, _Terminated) else 130
  finally:
    if previous is not None:
      signal.signal(signal.SIGTERM, previous)
  if not failed:
    return 0
  _stop(procs, grace_seconds)
  first = failed[0]
  for i in failed:  # process 0 wrote to the terminal already
    if logs[i] is not None:
      print(f"matopt: process {i} exited with code {codes[i]}; the end of {logs[i]}:", file=sys.stderr)
      print(_tail(logs[i]), file=sys.stderr)
  print(
    f"matopt: process {first} of {processes} failed (exit code {codes[first]}); stopped the others.", file=sys.stderr
  )
  return codes[first] if codes[first] > 0 else 1


class _Terminated(Exception):
  """The launcher got SIGTERM."""


def _terminated(signum: int, frame: Any) -> None:
  raise _Terminated(signum)


def _stop(procs: Sequence[subprocess.Popen], grace_seconds: float) -> None:
  """SIGINT every process still running, then SIGKILL those left after ``grace_seconds``.

  SIGINT, not SIGTERM: ``jax.distributed`` installs a preemption notifier
  that catches SIGTERM and only records it, while SIGINT interrupts Python
  at its next instruction. A process stuck in a collective with a failed
  peer answers neither, hence the SIGKILL.
  """
  running = [p for p in procs if p.poll() is None]
  for p in running:
    p.send_signal(signal.SIGINT)
  deadline = time.monotonic() + grace_seconds
  for p in running:
    try:
      p.wait(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
      p.kill()
      p.wait()


def _tail(path: Path, lines: int = 20) -> str:
  # gloo's connection lines and XLA's partitioner warnings are many and say nothing of the failure.
  noise = ("[Gloo]", "spmd_partitioner")
  kept = [line for line in path.read_text(errors="replace").splitlines() if not any(n in line for n in noise)]
  return "\n".join(kept[-lines:])
