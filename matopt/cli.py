"""The ``matopt`` command: ``matopt run CONFIG`` (see :mod:`matopt.experiments`)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

DEFAULT_CONFIG = "configs/quickstart.yaml"


def _resolve(config: str) -> Path:
  """A path as given, else a name under ./configs, else the source tree's configs/."""
  candidates = [Path(config), Path("configs") / f"{config}.yaml",
                Path(__file__).resolve().parents[1] / "configs" / Path(config).name,
                Path(__file__).resolve().parents[1] / "configs" / f"{config}.yaml"]
  return next((c for c in candidates if c.is_file()), Path(config))


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="matopt", description="Matrix-aware optimizers for JAX.")
  commands = parser.add_subparsers(dest="command", required=True)
  run = commands.add_parser(
      "run", help="train a small model with several optimizers side by side",
      description="Train the config's task with each of its optimizers; write results.json, "
                  "results.md and loss plots into --out. Re-running with the same --out resumes.")
  run.add_argument("config", nargs="?", default=DEFAULT_CONFIG,
                   help=f"YAML config, or the name of one in configs/ (default: {DEFAULT_CONFIG})")
  run.add_argument("--out", help="output directory (default: runs/<config name>)")
  run.add_argument("--steps", type=int, help="override the config's steps")
  run.add_argument("--optimizers", help="comma-separated subset of the config's optimizer names")
  run.add_argument("--seed", type=int, help="override the config's seed")
  run.add_argument("--overwrite", action="store_true", help="discard earlier runs in --out")
  run.add_argument("--quiet", action="store_true", help="no progress bars")
  return parser


def main(argv: Sequence[str] | None = None) -> int:
  args = _parser().parse_args(argv)
  # Imported after parsing so --help does not wait for JAX.
  from matopt.experiments import runner
  from matopt.experiments.config import ConfigError

  try:
    config = runner.override(
        runner.load(_resolve(args.config)), steps=args.steps, seed=args.seed,
        optimizers=args.optimizers.split(",") if args.optimizers else None)
    out = Path(args.out or Path("runs") / config.name)
    records = runner.run(config, out, overwrite=args.overwrite, progress=not args.quiet)
  except ConfigError as e:
    print(f"matopt: error: {e}", file=sys.stderr)
    return 2
  print((out / "results.md").read_text())
  print(f"Wrote {out / 'results.json'} ({len(records)} optimizers), results.md and plots.")
  return 0


if __name__ == "__main__":
  sys.exit(main())
