"""The ``matopt`` command: ``matopt run``, ``matopt report`` and ``matopt readme`` (see :mod:`matopt.experiments`)."""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path

from matopt import __version__  # read from the package metadata

DEFAULT_CONFIG = "configs/quickstart.yaml"


def _config_dirs() -> list[Path]:
  """Where config names are looked up: ./configs, then the configs shipped in the package.

  The shipped ones are package data (``matopt/configs/*.yaml``, in the wheel), so
  ``matopt run quickstart`` works from any directory after ``pip install``; the
  repository's ``configs/`` is a link to them.
  """
  dirs = [Path("configs"), Path(__file__).resolve().parent / "configs"]
  return [d for i, d in enumerate(dirs) if d.is_dir() and d.resolve() not in [e.resolve() for e in dirs[:i]]]


def _resolve(config: str) -> Path:
  """A path as given, else a name under ./configs, else a config shipped with matopt.

  Raises:
    ConfigError: none of these is a file; the message lists the configs there
      and, when one is close, suggests it.
  """
  candidates = [Path(config)]
  for directory in _config_dirs():
    candidates += [directory / Path(config).name, directory / f"{config}.yaml"]
  found = next((c for c in candidates if c.is_file()), None)
  if found is not None:
    return found
  import difflib

  from matopt.experiments.config import ConfigError

  names = sorted({p.stem for d in _config_dirs() for p in d.glob("*.yaml")})
  close = difflib.get_close_matches(Path(config).stem, names, n=1)
  guess = f"; did you mean {close[0]!r}?" if close else "."
  listing = (
    f" Configs to run by name: {', '.join(names)} (in {', '.join(str(d) for d in _config_dirs())})."
    if names
    else " There is no configs/ directory here or in the installed package to name one from."
  )
  raise ConfigError(f"config {config!r} does not exist (no such file, nor a name in configs/){guess}{listing}")


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="matopt", description="Matrix-aware optimizers for JAX.")
  parser.add_argument("--version", action="version", version=f"matopt {__version__}")
  commands = parser.add_subparsers(dest="command", required=True)
  run = commands.add_parser(
    "run",
    help="train a small model with several optimizers side by side",
    description="Train the config's task with each of its optimizers; write results.json, "
    "results.md and loss plots into --out. Re-running with the same --out resumes.",
  )
  run.add_argument(
    "config",
    nargs="?",
    default=DEFAULT_CONFIG,
    help=f"YAML config, or the name of one in configs/ (default: {DEFAULT_CONFIG})",
  )
  run.add_argument("--out", help="output directory (default: runs/<config name>)")
  run.add_argument("--steps", type=int, help="override the config's steps")
  run.add_argument("--optimizers", help="comma-separated subset of the config's optimizer names")
  run.add_argument("--seed", type=int, help="override the config's seed (and its seeds)")
  run.add_argument(
    "--seeds",
    type=int,
    metavar="N",
    help="run every optimizer with N seeds: the config's first seed (or --seed) and the "
    "N - 1 after it; results are mean ± std over them",
  )
  run.add_argument(
    "--set",
    action="append",
    default=[],
    metavar="KEY=VALUE",
    help="override any key of the config by its dotted path, e.g. "
    "--set optimizers.0.learning_rate=0.02 or --set schedule.decay=cosine "
    "(an optimizer entry may be named: optimizers.muon.momentum=0.9); "
    "VALUE is read as YAML; repeatable",
  )
  run.add_argument("--overwrite", action="store_true", help="discard earlier runs in --out")
  run.add_argument("--quiet", action="store_true", help="no progress bars")
  several = run.add_argument_group(
    "several processes",
    "Run the config's mesh as several JAX processes (jax.distributed), one per host; process 0 writes "
    "the files and --out must be a directory all of them see. See docs/sharding.md.",
  )
  several.add_argument(
    "--processes",
    type=int,
    metavar="N",
    help="start N processes on this machine, each with mesh size / N CPU devices, and wait for them "
    "(the logs of processes 1.. go to OUT/processes/)",
  )
  several.add_argument(
    "--coordinator", metavar="HOST:PORT", help="join a run: process 0's host and a free port there (all processes)"
  )
  several.add_argument("--num-processes", type=int, metavar="N", help="join a run of N processes")
  several.add_argument("--process-id", type=int, metavar="I", help="this process's index, 0 to N - 1")
  several.add_argument(
    "--distributed",
    action="store_true",
    help="join a run, with JAX finding what is not given of the three above (SLURM, Open MPI, Cloud TPU)",
  )
  report = commands.add_parser(
    "report",
    help="re-render results.json, results.md and plots of a run directory",
    description="Rebuild results.json, results.md and the loss plots of a `matopt run` output directory "
    "from the runs that finished there (all or some), without training; print the table.",
  )
  report.add_argument("dir", help="the output directory of `matopt run` (holding config.json)")
  readme = commands.add_parser(
    "readme",
    help="regenerate the result tables of Markdown files from their results.json",
    description="Replace each block between `<!-- matopt:table PATH -->` and `<!-- /matopt:table -->` "
    "(PATH: a results.json of `matopt run`, relative to the Markdown file) with the table "
    "made from it. With --check, write nothing and exit 1 if a table differs from its results.",
  )
  readme.add_argument(
    "files", nargs="*", default=["README.md"], metavar="FILE", help="Markdown files (default: README.md)"
  )
  readme.add_argument(
    "--check", action="store_true", help="only compare: list the stale tables and exit 1 if there are any"
  )
  return parser


def _report(directory: str) -> int:
  """``matopt report DIR``: no JAX, no training (:func:`matopt.experiments.report.render`)."""
  from matopt.experiments import report

  out = Path(directory)
  missing = [name for name in ("config.json", "meta.json") if not (out / name).is_file()]
  if missing:
    print(
      f"matopt: error: {out} has no {' or '.join(missing)}: not the output directory of a `matopt run` "
      "(of this version); pass the --out directory of one.",
      file=sys.stderr,
    )
    return 2
  config = json.loads((out / "config.json").read_text())
  if config.get("sizes"):
    from matopt.experiments import trends

    sizes = trends.render(out)
    print((out / "results.md").read_text())
    print(
      f"Wrote {out / 'trends.json'} ({len(sizes)} sizes; each re-rendered in {out / 'sizes'}), results.md and plots."
    )
    return 0
  records = report.render(out)
  total = len(config["optimizers"])
  print((out / "results.md").read_text())
  print(
    f"Wrote {out / 'results.json'} ({len(records)} of {total} optimizers with finished runs), results.md and plots."
  )
  return 0


def _readme(files: Sequence[str], *, check: bool) -> int:
  """``matopt readme [--check] [FILE ...]``: no JAX (:func:`matopt.experiments.readme.update`)."""
  from matopt.experiments import readme
  from matopt.experiments.config import count

  try:
    found = [block for name in files for block in readme.update(Path(name), check=check)]
  except readme.ReadmeError as e:
    print(f"matopt: error: {e}", file=sys.stderr)
    return 2
  stale = [b for b in found if b.stale]
  where = ", ".join(files)
  if not found:
    print(f"No `<!-- matopt:table PATH -->` blocks in {where}: nothing to regenerate.")
    return 0
  if check:
    for block in stale:
      print(readme.diff(block), end="")
      print(f"{block.source}:{block.line}: table from {block.marked} is stale", file=sys.stderr)
    if stale:
      print(
        f"matopt: {len(stale)}/{count(len(found), 'table')} in {where} stale against their results.json; run "
        "`matopt readme` to regenerate.",
        file=sys.stderr,
      )
      return 1
    print(f"Up to date: {count(len(found), 'table')} in {where}, each as its results.json gives it.")
    return 0
  for block in stale:
    print(f"{block.source}:{block.line}: regenerated the table from {block.marked}")
  print(
    f"Regenerated {len(stale)} of {count(len(found), 'table')} in {where}"
    + ("." if stale else ": all were up to date.")
  )
  return 0


def _without_processes(argv: Sequence[str]) -> list[str]:
  """``argv`` without ``--processes N`` (or ``--processes=N``)."""
  kept, skip = [], False
  for arg in argv:
    if skip:
      skip = False
    elif arg == "--processes":
      skip = True
    elif not arg.startswith("--processes="):
      kept.append(arg)
  return kept


def _launch(config, out: Path, count: int, argv: Sequence[str]) -> int:
  """``matopt run ... --processes N``: the same command as N processes of one mesh
  (:func:`matopt.experiments.processes.launch`)."""
  from matopt.experiments import processes
  from matopt.experiments.config import ConfigError

  if count < 1:
    raise ConfigError(f"--processes must be a positive number of processes, got {count}.")
  if config.mesh is None:
    raise ConfigError(
      "--processes needs a config with a mesh (mesh: {shape: [...], axes: [...]}): the processes share one "
      "mesh of all their devices, e.g. configs/gpt_mesh.yaml."
    )
  size = math.prod(config.mesh.shape)
  if size % count:
    raise ConfigError(
      f"--processes {count} does not divide config.mesh.shape {list(config.mesh.shape)} ({size} devices): each "
      f"process holds the same number of devices; use a divisor of {size}."
    )
  command = [sys.executable, "-m", "matopt", *_without_processes(argv), "--out", str(out)]
  return processes.launch(command, processes=count, local_devices=size // count, log_dir=out / "processes")


def main(argv: Sequence[str] | None = None) -> int:
  args = _parser().parse_args(argv)
  try:  # a core install (`pip install matopt`) has the optimizers, not the runner
    from matopt import experiments

    experiments.require()
  except ImportError as e:
    print(f"matopt: error: {e}", file=sys.stderr)
    return 2
  if args.command == "report":
    return _report(args.dir)
  if args.command == "readme":
    return _readme(args.files, check=args.check)
  joined = args.distributed or any(x is not None for x in (args.coordinator, args.num_processes, args.process_id))
  if args.processes is not None and joined:
    print(
      "matopt: error: --processes starts the processes itself; --coordinator, --num-processes, --process-id "
      "and --distributed are for joining processes started otherwise. Pass one or the other.",
      file=sys.stderr,
    )
    return 2
  # Imported after parsing so --help does not wait for JAX.
  from matopt.experiments import processes, runner
  from matopt.experiments.config import ConfigError, count

  if joined:  # before anything starts a JAX backend
    try:
      processes.initialize(coordinator=args.coordinator, num_processes=args.num_processes, process_id=args.process_id)
    except (ValueError, RuntimeError) as e:  # e.g. --distributed where JAX finds no cluster to join
      print(
        f"matopt: error: jax.distributed.initialize failed: {e}\nGive --coordinator, --num-processes and "
        "--process-id, or run where JAX detects the cluster (SLURM, Open MPI, Cloud TPU).",
        file=sys.stderr,
      )
      return 2
  try:
    config = runner.override(
      runner.load(_resolve(args.config), overrides=args.set, check_devices=args.processes is None),
      steps=args.steps,
      seed=args.seed,
      seeds=args.seeds,
      optimizers=args.optimizers.split(",") if args.optimizers else None,
    )
    out = Path(args.out or Path("runs") / config.name)
    if args.processes is not None:
      return _launch(config, out, args.processes, argv if argv is not None else sys.argv[1:])
    records = runner.run(config, out, overwrite=args.overwrite, progress=not args.quiet)
  except ConfigError as e:
    print(f"matopt: error: {e}", file=sys.stderr)
    return 2
  if not processes.is_main():
    return 0  # process 0 prints
  print((out / "results.md").read_text())
  written = (
    f"{out / 'trends.json'} ({count(len(records), 'size')}, each in {out / 'sizes'})"
    if config.sizes is not None
    else f"{out / 'results.json'} ({count(len(records), 'optimizer')})"
  )
  print(f"Wrote {written}, results.md and plots.")
  return 0


if __name__ == "__main__":
  sys.exit(main())
