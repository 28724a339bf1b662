"""Experiment configs: YAML read by PyYAML, checked against typed dataclasses.

Every key is checked against the real type hints of the dataclasses below
(:func:`typing.get_type_hints`) before any data is loaded or any step is
taken: an unknown key, a wrong type or an unknown optimizer is one
``ConfigError`` naming the key's place in the file and the valid choices.
Command-line overrides (``--set optimizers.0.learning_rate=0.02``) edit the
YAML document before it is checked, so they are checked the same way.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml

from matopt.experiments import tuning


class ConfigError(ValueError):
  """A config that cannot be run; the message says where and what to do."""


class _Loader(yaml.SafeLoader):
  """SafeLoader reading ``3e-4`` as a float (YAML 1.2), not a string (YAML 1.1)."""


_Loader.add_implicit_resolver(
  "tag:yaml.org,2002:float",
  re.compile(
    r"""^[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[0-9][0-9_]*[eE][-+]?[0-9]+|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$""",
    re.VERBOSE,
  ),
  list("-+0123456789."),
)

Decay = Literal["constant", "linear", "cosine"]
DECAYS: tuple[str, ...] = typing.get_args(Decay)


@dataclasses.dataclass(frozen=True)
class Schedule:
  """Learning-rate multiplier: linear warmup, then a decay to ``final_fraction``."""

  warmup_steps: int = 0
  decay: Decay = "constant"
  final_fraction: float = 0.0


@dataclasses.dataclass(frozen=True)
class MeshSpec:
  """The devices as a named grid, ``jax.make_mesh(shape, axes)``.

  The product of ``shape`` is the device count; the batch is split over the
  first axis (see :mod:`matopt.experiments.parallel` for the whole layout).
  """

  shape: tuple[int, ...]
  axes: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Sizes:
  """A sweep over model sizes: the whole experiment once per value of ``model.FIELD``.

  Each size is an experiment of its own (its own tuning, seeds and baseline
  horizons) in ``DIR/sizes/FIELD_VALUE/``. With ``tokens_per_param`` the
  data grows with the model, as in compute-optimal scaling studies (Hoffmann
  et al. 2022; Wen et al. 2025 compare optimizers at fixed multiples of it):
  a size with ``P`` parameters trains ``round(tokens_per_param * P /
  units_per_step)`` steps, and its warmup and evaluation intervals keep their
  ratio to the config's ``steps``. Without it every size trains ``steps``.
  """

  key: str  # "model.FIELD"
  values: tuple[Any, ...]
  tokens_per_param: float | None = None  # the task's units (tokens, examples) per parameter

  @property
  def field(self) -> str:
    return self.key.removeprefix("model.")

  def name(self, value: Any) -> str:
    """The size's directory name under ``sizes/``: ``width_64``."""
    return f"{self.field}_{value}"


@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
  """One entry of ``optimizers:``; ``learning_rate`` may be a grid, extended
  past its edges (``extend``), and ``tune`` adds grids over other options
  (:mod:`matopt.experiments.tuning`)."""

  name: str
  optimizer: str
  learning_rates: tuple[float, ...]
  options: Mapping[str, Any]
  tune: Mapping[str, tuple[Any, ...]] = dataclasses.field(default_factory=dict)  # option → values
  extend: int = 0  # learning rates at most added past an edge of the grid
  factor: float | None = None  # their ratio; None: the grid's own


@dataclasses.dataclass(frozen=True)
class Config:
  """A whole experiment (see ``configs/quickstart.yaml`` for a commented one)."""

  task: str
  steps: int  # training steps (an optimizer's Newton–Schulz iterations are its own option)
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
  seeds: tuple[int, ...] | None = None  # None: (seed,); each run's initialisation and batches
  baseline: str | None = None  # an optimizer entry's name; None: "adamw" if an entry has that name
  speedup_horizons: tuple[int, ...] = (1,)  # multiples of steps the baseline is also trained to
  sizes: Sizes | None = None  # None: one model size

  @property
  def run_seeds(self) -> tuple[int, ...]:
    """The seeds every optimizer runs with (``seeds``, else ``(seed,)``)."""
    return self.seeds if self.seeds is not None else (self.seed,)

  @property
  def baseline_name(self) -> str | None:
    """The baseline entry's name (``baseline``, else ``adamw`` when present, else None)."""
    if self.baseline is not None:
      return self.baseline
    return "adamw" if any(s.name == "adamw" for s in self.optimizers) else None


def type_name(tp: Any) -> str:
  """How a type reads in an error message (``float or null``, ``list of int``)."""
  if tp is type(None):
    return "null"
  if isinstance(tp, type):
    return {"ndarray": "a (nested) list of numbers"}.get(tp.__name__, tp.__name__)
  origin = typing.get_origin(tp)
  if origin is Literal:
    return " or ".join(repr(a) for a in typing.get_args(tp))
  if origin in (typing.Union, types.UnionType):
    return " or ".join(type_name(a) for a in typing.get_args(tp))
  if origin in (tuple, list, Sequence):  # YAML has lists only
    return f"list of {type_name(typing.get_args(tp)[0])}"
  if origin in (dict, Mapping):
    key, value = typing.get_args(tp) or (Any, Any)
    return f"mapping of {type_name(key)} to {type_name(value)}" if value is not Any else "mapping"
  return getattr(origin, "__name__", str(tp))


def _is_array(value: Any) -> bool:
  """A number, or a (nested, rectangular or not) list of numbers."""
  if isinstance(value, (list, tuple)):
    return all(_is_array(v) for v in value)
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def matches(value: Any, tp: Any) -> bool:
  """Whether a YAML value fits a type YAML can express: int, float, bool, str,
  None, ``Literal`` choices, unions, tuples/lists, mappings (keys and values
  checked), ``numpy.ndarray`` (nested lists of numbers); ``Any`` takes anything."""
  if tp is Any:
    return True
  if tp in (type(None), bool, int, float, str):
    scalar = {
      type(None): value is None,
      bool: isinstance(value, bool),
      str: isinstance(value, str),
      int: isinstance(value, int),
      float: isinstance(value, (int, float)),
    }
    return scalar[tp] and (tp is bool or not isinstance(value, bool))
  if getattr(tp, "__name__", "") == "ndarray":
    return isinstance(value, (list, tuple)) and _is_array(value)
  origin, args = typing.get_origin(tp), typing.get_args(tp)
  if origin is Literal:
    return any(value == a and type(value) is type(a) for a in args)
  if origin in (typing.Union, types.UnionType):
    return any(matches(value, a) for a in args)
  if origin in (tuple, list, Sequence) or tp in (tuple, list):
    return (
      isinstance(value, (list, tuple)) and all(matches(v, args[0]) for v in value)
      if args
      else isinstance(value, (list, tuple))
    )
  if origin in (dict, Mapping) or tp in (dict, Mapping):
    key, item = args or (Any, Any)
    return isinstance(value, Mapping) and all(matches(k, key) and matches(v, item) for k, v in value.items())
  raise TypeError(f"matches() does not handle {tp!r}")


def check_value(value: Any, tp: Any, where: str) -> Any:
  """``value`` if it fits ``tp`` (an int where a float is due becomes a float), else a ConfigError."""
  if typing.get_origin(tp) is Literal and isinstance(value, str) and not matches(value, tp):
    raise ConfigError(f"{where}: unknown {value!r}; valid choices are {typing.get_args(tp)}.")
  if not matches(value, tp):
    raise ConfigError(f"{where} must be {type_name(tp)}, got {type(value).__name__} {value!r}.")
  return float(value) if tp is float else value


def check_fields(cls: type, raw: Any, where: str, *, skip: tuple[str, ...] = ()) -> dict[str, Any]:
  """Check a mapping against a dataclass's fields and their type hints.

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
  required = [
    n for n, f in fields.items() if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
  ]
  missing = [n for n in required if n not in raw and n not in skip]
  if missing:
    raise ConfigError(f"{where}: missing required key(s) {missing}.")
  return {key: check_value(value, hints[key], f"{where}.{key}") for key, value in raw.items() if key not in skip}


def count(n: int, noun: str, plural: str | None = None) -> str:
  """``n`` with its noun in the right number: ``1 optimizer``, ``2 optimizers``."""
  return f"{n} {noun if n == 1 else plural or noun + 's'}"


def check_positive(where: str, value: int, *, zero_ok: bool = False) -> None:
  if value < 0 or (value == 0 and not zero_ok):
    raise ConfigError(f"{where} must be {'>= 0' if zero_ok else '> 0'}, got {value!r}.")


def _schedule(raw: Any) -> Schedule:
  schedule = Schedule(**check_fields(Schedule, raw, "config.schedule"))
  check_positive("config.schedule.warmup_steps", schedule.warmup_steps, zero_ok=True)
  if not 0.0 <= schedule.final_fraction <= 1.0:
    raise ConfigError(f"config.schedule.final_fraction must lie in [0, 1], got {schedule.final_fraction}.")
  return schedule


def _mesh_spec(raw: Any, batch_size: int, *, check_devices: bool = True) -> MeshSpec | None:
  """Check ``mesh:`` against the batch size and (``check_devices``) the devices JAX sees."""
  if raw is None:
    return None
  fields = check_fields(MeshSpec, raw, "config.mesh")
  shape, axes = tuple(fields["shape"]), tuple(fields["axes"])
  if not shape or len(shape) != len(axes):
    raise ConfigError(
      f"config.mesh: shape {list(shape)} and axes {list(axes)} must be non-empty lists of the same "
      "length (one name per mesh axis), e.g. {shape: [4, 2], axes: [data, model]}."
    )
  for i, size in enumerate(shape):
    check_positive(f"config.mesh.shape[{i}]", size)
  if len(set(axes)) != len(axes) or not all(axes):
    raise ConfigError(f"config.mesh.axes must be distinct non-empty names, got {list(axes)}.")
  if check_devices:
    import jax  # here, not at import: reading a config should not start a backend otherwise

    devices = jax.device_count()
    if math.prod(shape) != devices:
      raise ConfigError(
        f"config.mesh.shape {list(shape)} holds {count(math.prod(shape), 'device')}, but JAX sees {devices} "
        f"({jax.default_backend()}); use a shape whose product is {devices}, remove config.mesh, or on "
        f"CPU start with XLA_FLAGS=--xla_force_host_platform_device_count={math.prod(shape)}."
      )
  if batch_size % shape[0]:
    raise ConfigError(
      f"config.batch_size {batch_size} must be a multiple of config.mesh.shape[0] = {shape[0]} "
      f"(the batch is split over the first mesh axis {axes[0]!r})."
    )
  return MeshSpec(shape, axes)


def _sizes(raw: Any, model: Mapping[str, Any], data: Mapping[str, Any], task: Any) -> Sizes | None:
  """Check ``sizes:``: a key of ``model:``, distinct scalar values each giving a valid model."""
  if raw is None:
    return None
  fields = check_fields(Sizes, raw, "config.sizes")
  key = fields["key"]
  if not key.startswith("model.") or "." in key.removeprefix("model.") or key == "model.":
    raise ConfigError(f"config.sizes.key must name one key of config.model, e.g. model.width; got {key!r}.")
  values = tuple(fields["values"])
  if (
    not values
    or len(set(map(repr, values))) != len(values)
    or not all(isinstance(v, (int, float, str)) and not isinstance(v, bool) for v in values)
  ):
    raise ConfigError(f"config.sizes.values must be a non-empty list of distinct numbers or names, got {values!r}.")
  tokens = fields.get("tokens_per_param")
  if tokens is not None and not tokens > 0:
    raise ConfigError(f"config.sizes.tokens_per_param must be > 0, got {tokens!r}.")
  sizes = Sizes(key, values, tokens)
  for i, value in enumerate(values):
    try:
      task.check({**model, sizes.field: value}, data)
    except ConfigError as e:
      raise ConfigError(f"config.sizes.values[{i}] = {value!r}: {e}") from e
  return sizes


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
      "(set 'optimizer:' when 'name:' is only a label)."
    )
  grid, extend, factor = _learning_rate(raw.pop("learning_rate", None), f"{where}.learning_rate")
  tune = raw.pop("tune", None)
  options = catalogue[optimizer].check_options(raw, where)
  tune = _tune(tune, options, catalogue[optimizer], f"{where}.tune")
  return OptimizerSpec(name, optimizer, grid, options, tune, extend, factor)


def _learning_rate(lr: Any, where: str) -> tuple[tuple[float, ...], int, float | None]:
  """A number, a list (a grid), or ``{grid: [...], extend: N, factor: F}``: the grid, extend, factor."""
  spec = dict(lr) if isinstance(lr, Mapping) else {"grid": lr}
  unknown = sorted(set(spec) - {"grid", "extend", "factor"})
  grid = spec.get("grid")
  grid = grid if isinstance(grid, (list, tuple)) else [grid]
  if unknown or not grid or not all(matches(v, float) and v > 0 for v in grid):
    raise ConfigError(
      f"{where} must be a positive number or a non-empty list of them (a grid), or "
      f"{{grid: [...], extend: N, factor: F}} to extend the grid past its edges; got {lr!r}."
    )
  grid = tuple(float(v) for v in grid)
  extend = check_value(spec.get("extend", 0), int, f"{where}.extend")
  check_positive(f"{where}.extend", extend, zero_ok=True)
  factor = spec.get("factor")
  if factor is not None and not (matches(factor, float) and factor > 1):
    raise ConfigError(f"{where}.factor must be a number > 1 (the ratio of neighbouring rates), got {factor!r}.")
  if extend and factor is None and not tuning.is_geometric(grid):
    raise ConfigError(
      f"{where}: extend needs a geometric grid of 2 or more rates (one ratio between neighbours), "
      f"got {list(grid)}; give factor: F to extend by F."
    )
  return grid, extend, None if factor is None else float(factor)


def _tune(raw: Any, options: Mapping[str, Any], entry: Any, where: str) -> dict[str, tuple[Any, ...]]:
  """``tune:``: option → non-empty list of values, each checked as the option would be."""
  if raw is None:
    return {}
  if not isinstance(raw, Mapping) or not raw:
    raise ConfigError(f"{where} must be a mapping of option → list of values, e.g. {{b2: [0.95, 0.99]}}; got {raw!r}.")
  out = {}
  for key, values in raw.items():
    if not isinstance(values, list) or not values or any(isinstance(v, (list, dict)) for v in values):
      raise ConfigError(f"{where}.{key} must be a non-empty list of values (numbers, strings), got {values!r}.")
    if key in options:
      raise ConfigError(f"{where}.{key}: {key} is also set to {options[key]!r}; set it in one place.")
    if key == "learning_rate":
      raise ConfigError(f"{where}.learning_rate: the learning rate's grid is learning_rate itself.")
    out[key] = tuple(_tuned_value(v, key, options, entry, f"{where}.{key}[{i}]") for i, v in enumerate(values))
  return out


def _tuned_value(value: Any, key: str, options: Mapping[str, Any], entry: Any, where: str) -> Any:
  """One value of a tuned option, checked as the option (or the schedule's warmup) would be."""
  if key == tuning.WARMUP:
    check_positive(where, check_value(value, int, where), zero_ok=True)
    return value
  if key not in entry.options:
    raise ConfigError(
      f"{where}: unknown option {key!r}; tunable are {tuning.WARMUP!r} and the options {sorted(entry.settable)}."
    )
  return entry.check_options({**options, key: value}, where)[key]


def _optimizer_specs(raw: Any, catalogue: Mapping[str, Any]) -> tuple[OptimizerSpec, ...]:
  if not isinstance(raw, list) or not raw:
    raise ConfigError("config.optimizers must be a non-empty list of mappings with 'name' and 'learning_rate'.")
  specs = tuple(_optimizer_spec(e, f"config.optimizers[{i}]", catalogue) for i, e in enumerate(raw))
  names = [s.name for s in specs]
  duplicated = sorted({n for n in names if names.count(n) > 1})
  if duplicated:
    raise ConfigError(f"config.optimizers: names {duplicated} appear twice; give each entry its own 'name'.")
  return specs


def check_update_args(config: Config, catalogue: Mapping[str, Any], tasks: Mapping[str, Any]) -> None:
  """Every argument an optimizer's ``update`` needs is one the task's models can
  report, and an optimizer with sampled-label statistics (an entry's ``stats``)
  has a task whose logits it can sample from (``inputs_and_labels``)."""
  supplied = tasks[config.task].update_args
  for i, spec in enumerate(config.optimizers):
    if getattr(catalogue[spec.optimizer], "stats", None) and not hasattr(tasks[config.task], "inputs_and_labels"):
      able = sorted(n for n, t in tasks.items() if hasattr(t, "inputs_and_labels"))
      raise ConfigError(
        f"config.optimizers[{i}]: {spec.optimizer} samples labels from the model's logits for its statistics, "
        f"which the {config.task!r} task cannot supply (it has no inputs_and_labels); use "
        f"{spec.optimizer.removesuffix('_gn')} there, or a task that can ({', '.join(map(repr, able)) or 'none yet'})."
      )
    missing = [a for a in catalogue[spec.optimizer].update_args if a not in supplied]
    if missing:
      able = sorted(n for n, t in tasks.items() if all(a in t.update_args for a in missing))
      raise ConfigError(
        f"config.optimizers[{i}]: {spec.optimizer}'s update needs {', '.join(missing)}, which the "
        f"{config.task!r} task's models cannot report (they report {sorted(supplied) or 'nothing'}); "
        f"use {spec.optimizer} with a task that can ({', '.join(map(repr, able)) or 'none yet'})."
      )


def check_seeds_and_baseline(config: Config, *, seed_given: bool = True) -> None:
  """``seeds`` (distinct, and starting with ``seed`` when both are given),
  ``baseline`` (an entry's name) and ``speedup_horizons`` (distinct positive
  multiples of ``steps``, 1 among them)."""
  seeds = config.seeds
  if seeds is not None:
    if not seeds or len(set(seeds)) != len(seeds) or any(s < 0 for s in seeds):
      raise ConfigError(f"config.seeds must be a non-empty list of distinct non-negative ints, got {list(seeds)}.")
    if seed_given and config.seed != seeds[0]:
      raise ConfigError(
        f"config.seed {config.seed} and config.seeds {list(seeds)} disagree: seeds replaces seed; remove "
        f"seed, or start seeds with it (seeds: [{config.seed}, ...])."
      )
  names = [s.name for s in config.optimizers]
  if config.baseline is not None and config.baseline not in names:
    raise ConfigError(f"config.baseline: no optimizer entry named {config.baseline!r}; its entries are {names}.")
  horizons = config.speedup_horizons
  if 1 not in horizons or len(set(horizons)) != len(horizons) or any(h < 1 for h in horizons):
    raise ConfigError(
      f"config.speedup_horizons must be distinct positive multiples of steps including 1, e.g. [1, 2, 4]; "
      f"got {list(horizons)}."
    )
  if len(horizons) > 1 and config.baseline_name is None:
    raise ConfigError(
      f"config.speedup_horizons: there is no baseline to train longer (set config.baseline to one of {names})."
    )


def parse(raw: Any, *, catalogue: Mapping[str, Any], tasks: Mapping[str, Any], check_devices: bool = True) -> Config:
  """A checked :class:`Config` from the mapping a YAML file holds.

  Args:
    raw: the YAML document.
    catalogue: optimizer name → entry with ``check_options(raw, where)`` and
      ``update_args`` (:mod:`matopt.experiments.optimizers`).
    tasks: task name → class with ``check(model, data)`` and ``update_args``
      (:class:`matopt.experiments.tasks.Task`).
    check_devices: check that ``mesh:`` holds as many devices as JAX sees
      (which starts a backend). ``matopt run --processes N`` reads the config
      without this check, before the processes that hold the devices start.
  """
  top = check_fields(Config, raw, "config", skip=("optimizers", "schedule", "mesh", "sizes"))
  if top["task"] not in tasks:
    raise ConfigError(f"config.task: unknown task {top['task']!r}; valid tasks are {sorted(tasks)}.")
  for key in ("steps", "batch_size", "eval_batches"):
    if key in top:
      check_positive(f"config.{key}", top[key])
  for key in ("eval_every", "checkpoint_every"):
    if key in top:
      check_positive(f"config.{key}", top[key], zero_ok=True)
  for key in ("seeds", "speedup_horizons"):
    if top.get(key) is not None:
      top[key] = tuple(top[key])
  schedule = _schedule(raw.get("schedule", {}))
  specs = _optimizer_specs(raw["optimizers"], catalogue)
  mesh = _mesh_spec(raw.get("mesh"), top["batch_size"], check_devices=check_devices)
  config = Config(**top, optimizers=specs, schedule=schedule, mesh=mesh)
  check_seeds_and_baseline(config, seed_given="seed" in raw)
  tasks[config.task].check(config.model, config.data)
  config = dataclasses.replace(config, sizes=_sizes(raw.get("sizes"), config.model, config.data, tasks[config.task]))
  check_update_args(config, catalogue, tasks)
  return config


def _step_into(node: Any, key: str, where: str) -> tuple[Any, Any]:
  """The container that holds ``key`` under ``node`` and the key in it: a list
  index, or for a list of named entries (``optimizers``) an entry's name."""
  if isinstance(node, list):
    if key.lstrip("-").isdigit():
      index = int(key)
      if not -len(node) <= index < len(node):
        raise ConfigError(
          f"--set {where}: index {index} is out of range; {where.rsplit('.', 1)[0]} has "
          f"{count(len(node), 'entry', 'entries')}."
        )
      return node, index
    names = [e.get("name") if isinstance(e, Mapping) else None for e in node]
    if key not in names:
      raise ConfigError(
        f"--set {where}: no entry named {key!r}; give an index (0 to {len(node) - 1}) "
        f"or one of the names {[n for n in names if n]}."
      )
    return node, names.index(key)
  if isinstance(node, dict):
    return node, key
  raise ConfigError(
    f"--set {where}: {where.rsplit('.', 1)[0]} is {type(node).__name__} {node!r}, which has no keys to set."
  )


def apply_override(raw: dict[str, Any], assignment: str) -> dict[str, Any]:
  """``raw`` with one ``dotted.key=value`` assignment applied in place.

  The key is a path of mapping keys and list indices (``optimizers.0.learning_rate``;
  an optimizer may also be named, ``optimizers.muon.momentum``); the value is
  read as YAML (``0.02``, ``[0.01, 0.02]``, ``cosine``, ``null``). Missing
  mappings on the way are created; the result is checked as a whole by
  :func:`parse`, so an unknown key or a wrong type is reported as in a file.
  """
  path, sep, text = assignment.partition("=")
  if not sep or not path or any(not part for part in path.split(".")):
    raise ConfigError(
      f"--set {assignment!r}: expected KEY=VALUE with a dotted KEY, e.g. "
      "optimizers.0.learning_rate=0.02 or schedule.decay=cosine."
    )
  try:
    value = yaml.load(text, Loader=_Loader)
  except yaml.YAMLError as e:
    raise ConfigError(f"--set {assignment!r}: the value is not valid YAML: {e}") from e
  node, parts = raw, path.split(".")
  for i, part in enumerate(parts[:-1]):
    container, key = _step_into(node, part, ".".join(parts[: i + 1]))
    if isinstance(container, dict) and key not in container:
      container[key] = {}
    node = container[key]
  container, key = _step_into(node, parts[-1], path)
  container[key] = value
  return raw


def load(path: str | Path, *, overrides: Sequence[str] = (), **kwargs: Any) -> Config:
  """Read a YAML config, apply ``overrides`` (:func:`apply_override`) and check it (:func:`parse`)."""
  path = Path(path)
  if not path.is_file():
    raise ConfigError(f"Config file {str(path)!r} does not exist.")
  try:
    raw = yaml.load(path.read_text(), Loader=_Loader)
  except yaml.YAMLError as e:
    raise ConfigError(f"{path}: not valid YAML: {e}") from e
  if isinstance(raw, Mapping) and "name" not in raw:
    raw = {**raw, "name": path.stem}
  for assignment in overrides:
    if not isinstance(raw, dict):
      break  # parse() says what is wrong with the document
    raw = apply_override(raw, assignment)
  return parse(raw, **kwargs)


def to_dict(config: Config) -> dict[str, Any]:
  """The config as plain data (for results.json and resume checks).

  ``mesh``, ``seeds``, ``baseline``, ``speedup_horizons`` and ``sizes`` appear only
  when set (not their defaults), so a directory written before those keys
  existed still belongs to the same config.
  """
  out = dataclasses.asdict(config)
  for key, default in (
    ("mesh", None),
    ("seeds", None),
    ("baseline", None),
    ("speedup_horizons", (1,)),
    ("sizes", None),
  ):
    if getattr(config, key) == default:
      del out[key]
  out["optimizers"] = [entry_dict(s) for s in config.optimizers]
  return out


def entry_dict(spec: OptimizerSpec) -> dict[str, Any]:
  """An optimizer entry as plain data; ``learning_rate`` a list unless it extends, ``tune`` only when set."""
  lr: Any = list(spec.learning_rates)
  if spec.extend or spec.factor is not None:
    lr = {"grid": lr, "extend": spec.extend, **({"factor": spec.factor} if spec.factor is not None else {})}
  tune = {"tune": {k: list(v) for k, v in spec.tune.items()}} if spec.tune else {}
  return {"name": spec.name, "optimizer": spec.optimizer, "learning_rate": lr, **tune, **dict(spec.options)}
