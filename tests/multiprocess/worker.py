"""One process of a multi-process run of matopt's sharded optimizers (a
script, run by tests/test_multiprocess.py, not collected by pytest).

Every process starts jax.distributed on localhost with ``--local-devices``
CPU devices of its own, builds the global ``(processes, local devices)``
mesh over all of them and runs :func:`tests.multiprocess.steps.run` for each
optimizer: the same program in every process, XLA's collectives (gloo)
crossing processes. Each process writes its results, gathered to the host,
to ``OUT/result_<process id>.npz`` and ``.json``.

    python tests/multiprocess/worker.py --process-id 0 --processes 2 \\
      --local-devices 4 --port 12345 --out DIR [--optimizers muon,soap]

(and the same with ``--process-id 1``, at the same time).
"""

import argparse
import json
import os
import pathlib
import sys
import time


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--process-id", type=int, required=True)
  parser.add_argument("--processes", type=int, required=True)
  parser.add_argument("--local-devices", type=int, required=True)
  parser.add_argument("--port", type=int, required=True)
  parser.add_argument("--out", type=pathlib.Path, required=True)
  parser.add_argument("--optimizers", default="muon,scion,shampoo,soap")
  parser.add_argument(
    "--checkpoint", type=pathlib.Path, help="save params and state after the first step to CHECKPOINT/<optimizer>"
  )
  parser.add_argument("--checkpointed", default="", help="the optimizers to save (comma-separated)")
  parser.add_argument("--restore", action="store_true", help="restore from --checkpoint and take the last step only")
  args = parser.parse_args(argv)

  # XLA reads these when its backend starts: before jax is imported.
  os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.local_devices}"
  os.environ["JAX_PLATFORMS"] = "cpu"
  start = time.perf_counter()
  import jax

  # The CPU client's cross-process collectives (gloo is jax 0.10's default;
  # set anyway so that a change of default cannot silently change the test).
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(
    coordinator_address=f"127.0.0.1:{args.port}",
    num_processes=args.processes,
    process_id=args.process_id,
    initialization_timeout=120,
  )
  import numpy as np

  # After jax.distributed.initialize, which must come before any JAX call.
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
  from tests.multiprocess import steps

  print(f"jax.distributed up: {time.perf_counter() - start:.1f} s", flush=True)
  assert jax.process_count() == args.processes and jax.local_device_count() == args.local_devices
  mesh = jax.make_mesh((args.processes, args.local_devices), ("data", "model"))
  meta = {
    "process_index": jax.process_index(),
    "process_count": jax.process_count(),
    "device_count": jax.device_count(),
    "local_device_count": jax.local_device_count(),
    "mesh_processes": [[d.process_index for d in row] for row in mesh.devices],
    "optimizers": {},
  }
  arrays = {}
  for name in args.optimizers.split(","):
    save = restore = checkpoints = None
    if args.checkpoint is not None and (args.restore or name in args.checkpointed.split(",")):
      # The main job's checkpoints (orbax; every process writes its own shards).
      from matopt.experiments.train import Checkpoints

      checkpoints = Checkpoints(args.checkpoint / name)
      if args.restore:
        restore = lambda params, state, c=checkpoints: _restore(c, params, state)
      else:
        save = lambda params, state, c=checkpoints: c.save(1, {"params": params, "opt_state": state}, {})
    start = time.perf_counter()
    result = steps.run(name, mesh, save=save, restore=restore)
    print(f"{name}: {time.perf_counter() - start:.1f} s", flush=True)  # in the log the test shows on failure
    if checkpoints is not None:
      checkpoints.close()
    for kind in ("params", "updates"):
      taken = result.pop(kind)  # keyed by step: a restored run takes the last only
      for t, leaves in enumerate(taken, start=steps.STEPS - len(taken) + 1):
        arrays |= {f"{name}/{kind}{t}/{i}": x for i, x in enumerate(leaves)}
    arrays |= {f"{name}/state/{i}": x for i, x in enumerate(result.pop("state"))}
    meta["optimizers"][name] = result
  args.out.mkdir(parents=True, exist_ok=True)
  np.savez(args.out / f"result_{args.process_id}.npz", **arrays)
  (args.out / f"result_{args.process_id}.json").write_text(json.dumps(meta, indent=1))
  jax.distributed.shutdown()


def _restore(checkpoints, params, state):
  restored, _ = checkpoints.restore(1, {"params": params, "opt_state": state})
  return restored["params"], restored["opt_state"]


if __name__ == "__main__":
  main()
