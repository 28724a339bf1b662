"""Experiment configs: YAML read by PyYAML, checked against dataclasses.

Every key is checked before any data is loaded or any step is taken: an
unknown key, a wrong type or an unknown optimizer is one ``ConfigError``
naming the key's place in the file and the valid choices.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
  """A config that cannot be run; the message says where and what to do."""


class _Loader(yaml.SafeLoader):
  """SafeLoader reading ``3e-4`` as a float (YAML 1.2), not a string (YAML 1.1)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[0-9][0-9_]*[eE][-+]?[0-9]+|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


@dataclasses.dataclass(frozen=True)
class Schedule:
  """Learning-rate multiplier: linear warmup, then a decay to ``final_fraction``."""

  warmup_steps: int = 0
  decay: str = "constant"  # "constant" | "linear" | "cosine"
  final_fraction: float = 0.0


DECAYS = ("constant", "linear", "cosine")


@dataclasses.dataclass(frozen=True)
class MeshSpec:
  """The devices as a named grid, ``jax.make_mesh(shape, axes)``.

  The product of ``shape`` is the device count; the batch is split over the
  first axis (see :mod:`matopt.experiments.parallel` for the whole layout).
  """

  shape: tuple[int, ...]
  axes: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
  """One entry of ``optimizers:``; ``learning_rate`` may be a grid."""

  name: str
  optimizer: str
  learning_rates: tuple[float, ...]
  options: Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class Config:
  """A whole experiment (see ``configs/quickstart.yaml`` for a commented one)."""

  task: str
  steps: int
  batch_size: int
  optimizers: tuple[OptimizerSpec, ...]
  eval_every: int = 0  # 0: only at the end
  eval_batches: int = 8
  seed: int = 0
  checkpoint_every: int = 0  # 0: no checkpoints
  model: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  data: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  schedule: Schedule = Schedule()
  name: str = "experiment"
  mesh: MeshSpec | None = None  # None: one device


_TOP_KEYS = tuple(f.name for f in dataclasses.fields(Config))


def type_name(tp: Any) -> str:
  if tp is type(None):
    return "null"
  if isinstance(tp, type):
    return tp.__name__
  if typing.get_origin(tp) in (typing.Union, types.UnionType):
    return " or ".join(type_name(a) for a in typing.get_args(tp))
  origin = typing.get_origin(tp)
  if origin in (tuple, list):  # YAML has lists only
    return f"list of {type_name(typing.get_args(tp)[0])}"
  return getattr(origin, "__name__", str(tp))


def matches(value: Any, tp: Any) -> bool:
  """Whether a YAML value fits a (simple) annotation: int, float, bool, str,
  None, unions of them, tuples/lists, mappings; ``Any`` takes anything."""
  if tp is Any:
    return True
  if tp is type(None):
    return value is None
  if tp is bool:
    return isinstance(value, bool)
  if tp is int:
    return isinstance(value, int) and not isinstance(value, bool)
  if tp is float:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
  if tp is str:
    return isinstance(value, str)
  origin = typing.get_origin(tp)
  if origin in (typing.Union, types.UnionType):
    return any(matches(value, a) for a in typing.get_args(tp))
  if origin in (tuple, list, typing.Sequence) or tp in (tuple, list):
    args = typing.get_args(tp)
    return isinstance(value, (list, tuple)) and all(matches(v, args[0]) for v in value) if args else isinstance(value, (list, tuple))
  if origin in (dict, Mapping) or tp in (dict, Mapping):
    return isinstance(value, Mapping)
  raise TypeError(f"matches() does not handle {tp!r}")


def check_fields(cls: type, raw: Any, where: str, *, skip: tuple[str, ...] = ()) -> dict[str, Any]:
  """Check a mapping against a dataclass's fields and types.

  Returns the checked keys (others take the dataclass defaults). ``skip``
  names fields the caller checks itself.
  """
  if not isinstance(raw, Mapping):
    raise ConfigError(f"{where} must be a mapping, got {type(raw).__name__} {raw!r}.")
  hints = typing.get_type_hints(cls)
  fields = {f.name: f for f in dataclasses.fields(cls)}
  unknown = sorted(set(raw) - set(fields))
  if unknown:
    raise ConfigError(f"{where}: unknown key(s) {unknown}; valid keys are {sorted(fields)}.")
  required = [n for n, f in fields.items()
              if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
  missing = [n for n in required if n not in raw and n not in skip]
  if missing:
    raise ConfigError(f"{where}: missing required key(s) {missing}.")
  out = {}
  for key, value in raw.items():
    if key in skip:
      continue
    if not matches(value, hints[key]):
      raise ConfigError(
          f"{where}.{key} must be {type_name(hints[key])}, got {type(value).__name__} {value!r}.")
    out[key] = float(value) if hints[key] is float else value
  return out


def count(n: int, noun: str, plural: str | None = None) -> str:
  """``n`` with its noun in the right number: ``1 optimizer``, ``2 optimizers``."""
  return f"{n} {noun if n == 1 else plural or noun + 's'}"


def check_positive(where: str, value: int, *, zero_ok: bool = False) -> None:
  if value < 0 or (value == 0 and not zero_ok):
    raise ConfigError(f"{where} must be {'>= 0' if zero_ok else '> 0'}, got {value!r}.")


def _mesh_spec(raw: Any, batch_size: int) -> MeshSpec | None:
  """Check ``mesh:`` against the devices JAX sees and the batch size."""
  if raw is None:
    return None
  fields = check_fields(MeshSpec, raw, "config.mesh")
  shape, axes = tuple(fields["shape"]), tuple(fields["axes"])
  if not shape or len(shape) != len(axes):
    raise ConfigError(
        f"config.mesh: shape {list(shape)} and axes {list(axes)} must be non-empty lists of the same "
        "length (one name per mesh axis), e.g. {shape: [4, 2], axes: [data, model]}.")
  for i, size in enumerate(shape):
    check_positive(f"config.mesh.shape[{i}]", size)
  if len(set(axes)) != len(axes) or not all(axes):
    raise ConfigError(f"config.mesh.axes must be distinct non-empty names, got {list(axes)}.")
  import jax  # here, not at import: reading a config should not start a backend otherwise

  devices = jax.device_count()
  if math.prod(shape) != devices:
    raise ConfigError(
        f"config.mesh.shape {list(shape)} holds {count(math.prod(shape), 'device')}, but JAX sees {devices} "
        f"({jax.default_backend()}); use a shape whose product is {devices}, remove config.mesh, or on "
        f"CPU start with XLA_FLAGS=--xla_force_host_platform_device_count={math.prod(shape)}.")
  if batch_size % shape[0]:
    raise ConfigError(
        f"config.batch_size {batch_size} must be a multiple of config.mesh.shape[0] = {shape[0]} "
        f"(the batch is split over the first mesh axis {axes[0]!r}).")
  return MeshSpec(shape, axes)


def _optimizer_spec(raw: Any, where: str, catalogue: Mapping[str, Any]) -> OptimizerSpec:
  if not isinstance(raw, Mapping):
    raise ConfigError(f"{where} must be a mapping with at least 'name', got {raw!r}.")
  raw = dict(raw)
  name = raw.pop("name", None)
  if not isinstance(name, str):
    raise ConfigError(f"{where}.name must be a string naming the run, e.g. 'muon'; got {name!r}.")
  optimizer = raw.pop("optimizer", name)
  if optimizer not in catalogue:
    raise ConfigError(
        f"{where}: unknown optimizer {optimizer!r}; valid optimizers are {sorted(catalogue)} "
        "(set 'optimizer:' when 'name:' is only a label).")
  lr = raw.pop("learning_rate", None)
  grid = lr if isinstance(lr, (list, tuple)) else [lr]
  if lr is None or not grid or not all(matches(v, float) and v > 0 for v in grid):
    raise ConfigError(
        f"{where}.learning_rate must be a positive number or a non-empty list of them (a grid), got {lr!r}.")
  options = catalogue[optimizer].check_options(raw, where)
  return OptimizerSpec(name, optimizer, tuple(float(v) for v in grid), options)


def parse(raw: Any, *, catalogue: Mapping[str, Any], tasks: Mapping[str, Any]) -> Config:
  """A checked :class:`Config` from the mapping a YAML file holds.

  Args:
    raw: the YAML document.
    catalogue: optimizer name → entry with ``check_options(raw, where)``.
    tasks: task name → class with ``check(model, data)``.
  """
  top = check_fields(Config, raw, "config", skip=("optimizers", "schedule", "mesh"))
  if top["task"] not in tasks:
    raise ConfigError(f"config.task: unknown task {top['task']!r}; valid tasks are {sorted(tasks)}.")
  for key in ("steps", "batch_size", "eval_batches"):
    if key in top:
      check_positive(f"config.{key}", top[key])
  for key in ("eval_every", "checkpoint_every"):
    if key in top:
      check_positive(f"config.{key}", top[key], zero_ok=True)
  schedule = Schedule(**check_fields(Schedule, raw.get("schedule", {}), "config.schedule"))
  if schedule.decay not in DECAYS:
    raise ConfigError(f"config.schedule.decay: unknown decay {schedule.decay!r}; valid decays are {DECAYS}.")
  check_positive("config.schedule.warmup_steps", schedule.warmup_steps, zero_ok=True)
  if not 0.0 <= schedule.final_fraction <= 1.0:
    raise ConfigError(f"config.schedule.final_fraction must lie in [0, 1], got {schedule.final_fraction}.")
  entries = raw["optimizers"]
  if not isinstance(entries, list) or not entries:
    raise ConfigError("config.optimizers must be a non-empty list of mappings with 'name' and 'learning_rate'.")
  specs = tuple(_optimizer_spec(e, f"config.optimizers[{i}]", catalogue) for i, e in enumerate(entries))
  names = [s.name for s in specs]
  duplicated = sorted({n for n in names if names.count(n) > 1})
  if duplicated:
    raise ConfigError(f"config.optimizers: names {duplicated} appear twice; give each entry its own 'name'.")
  mesh = _mesh_spec(raw.get("mesh"), top["batch_size"])
  config = Config(**top, optimizers=specs, schedule=schedule, mesh=mesh)
  tasks[config.task].check(config.model, config.data)
  return config


def load(path: str | Path, **kwargs: Any) -> Config:
  """Read and check a YAML config (see :func:`parse`)."""
  path = Path(path)
  if not path.is_file():
    raise ConfigError(f"Config file {str(path)!r} does not exist.")
  try:
    raw = yaml.load(path.read_text(), Loader=_Loader)  # noqa: S506 (a SafeLoader)
  except yaml.YAMLError as e:
    raise ConfigError(f"{path}: not valid YAML: {e}") from e
  if isinstance(raw, Mapping) and "name" not in raw:
    raw = {**raw, "name": path.stem}
  return parse(raw, **kwargs)


def to_dict(config: Config) -> dict[str, Any]:
  """The config as plain data (for results.json and resume checks).

  ``mesh`` appears only when set, so a directory written before the key
  existed still belongs to the same config.
  """
  out = dataclasses.asdict(config)
  if config.mesh is None:
    del out["mesh"]
  out["optimizers"] = [
      {"name": s.name, "optimizer": s.optimizer, "learning_rate": list(s.learning_rates), **dict(s.options)}
      for s in config.optimizers
  ]
  return out
