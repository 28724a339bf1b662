"""The optimizers a config may name, with the options each accepts.

The catalogue is matopt's registry (:data:`matopt.optimizers.registry.OPTIMIZERS`)
plus optax's baselines ``adamw``, ``adam`` and ``sgd``. Every option comes
from the factory's signature and its resolved type hints
(:func:`typing.get_type_hints`), so a new optimizer or keyword is
configurable at once. An option YAML can express (numbers, flags, names,
lists, mappings, arrays as nested lists) is checked against its type; one
that is a Python object (a label function, dimension numbers, a transform)
is refused with a message that says so and what to do instead.

``shampoo_gn`` and ``soap_gn`` are ``shampoo`` and ``soap`` with
Gauss–Newton statistics: their step takes the preconditioner's statistics
from the gradient at labels sampled from the model
(:func:`matopt.sampled_label_grads`, one more backward pass), set by the
entry's ``gn_samples`` and ``gn_fraction`` (:attr:`Entry.stats`).

Learning rates are scheduled by :func:`multiplier`, built from optax's
schedule functions.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import operator
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import jax
import numpy as np
import optax

from matopt.experiments.config import ConfigError, Schedule, check_value, type_name
from matopt.optimizers.registry import OPTIMIZERS

# Where YAML has another way, for Python-object options a user is likely to look for.
_INSTEAD = {
  "adaptive": "for an adaptive second moment name normuon or adamuon as 'optimizer:' (muon with one set)",
  "labels": "the roles come from matopt.labels.by_role on the model's parameter paths",
  "dimension_numbers": "the tasks' kernels are viewed as matrices by matopt's defaults",
}


@dataclasses.dataclass(frozen=True)
class Option:
  """One keyword of a factory.

  Attributes:
    name: the keyword.
    type: what a YAML value must be (:func:`matopt.experiments.config.matches`),
      or None when YAML cannot express the annotation.
    default: the factory's default.
    annotation: the resolved annotation, for messages.
  """

  name: str
  type: Any
  default: Any
  annotation: Any

  @property
  def array(self) -> bool:
    """Whether a YAML list is handed to the factory as a numpy array."""
    return _has_array(self.type)


def _has_array(tp: Any) -> bool:
  return tp is np.ndarray or any(_has_array(a) for a in typing.get_args(tp))


def _scalar_default(default: Any) -> bool:
  return default is None or (isinstance(default, (int, float)) and not isinstance(default, bool))


def yaml_type(tp: Any, default: Any = None) -> Any:
  """The part of an annotation YAML can express, or None.

  ``int``, ``float``, ``bool``, ``str``, ``None``, ``Literal`` choices,
  sequences and mappings of those stay; arrays become nested lists
  (``numpy.ndarray``), except in a scalar hyperparameter (a union with
  ``float`` whose default is a number or None: its array form exists for
  ``optax.inject_hyperparams``); where ``float`` is allowed, ``int`` and
  ``bool`` add nothing YAML needs. ``Any``, callables, transforms and other
  classes are Python objects: None. A union keeps its expressible members
  and is None if only ``None`` is left.
  """
  if tp in (int, float, bool, str, type(None)):
    return tp
  if tp in (np.ndarray, jax.Array):
    return np.ndarray
  origin, args = typing.get_origin(tp), typing.get_args(tp)
  if origin is Literal:
    return tp
  if origin in (typing.Union, types.UnionType):
    members = [m for m in (yaml_type(a, default) for a in args) if m is not None]
    if float in members:
      members = [m for m in members if m not in (int, bool) and not (m is np.ndarray and _scalar_default(default))]
    members = list(dict.fromkeys(members))
    if not members or members == [type(None)]:
      return None
    return functools.reduce(operator.or_, members)
  if origin in (tuple, list, Sequence) and args:
    item = yaml_type(args[0])
    return None if item is None else tuple[item, ...]
  if origin in (dict, Mapping) and len(args) == 2:
    key, value = yaml_type(args[0]), yaml_type(args[1])
    return None if key is None or value is None else Mapping[key, value]
  return None


def _type_hints(factory: Callable[..., Any]) -> dict[str, Any]:
  """``typing.get_type_hints(factory)``. optax's ``Params`` is a recursive
  union that names ``'ArrayTree'``, which no factory's module defines; ``optax.Params``
  is that union (so chex, which optax no longer requires, is not needed)."""
  try:
    return typing.get_type_hints(factory, localns={"ArrayTree": optax.Params})
  except NameError as e:
    raise TypeError(
      f"{factory.__qualname__}'s annotations name something its module does not define ({e}); import it there."
    ) from e


def options_of(factory: Callable[..., Any]) -> dict[str, Option]:
  """Every keyword of ``factory`` but ``learning_rate``, with its YAML type."""
  hints = _type_hints(factory)
  out = {}
  for name, p in inspect.signature(factory).parameters.items():
    if name == "learning_rate" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
      continue
    tp = hints.get(name, Any)
    out[name] = Option(name, yaml_type(tp, p.default), p.default, tp)
  return out


@dataclasses.dataclass(frozen=True)
class Entry:
  """A configurable optimizer: ``factory(learning_rate, **options)``.

  Attributes:
    name: the catalogue name (the ``optimizer:`` of a config entry).
    factory: builds the gradient transformation.
    options: every keyword of the factory (:func:`options_of`).
    update_args: what its ``update`` needs besides ``(grads, state, params)``
      (the registry's ``OptimizerInfo.update_args``); the task supplies them.
    model_options: options filled from the task's ``model_options()`` when
      the config does not set them.
    stats: options of the entry that are not the factory's but set how its
      step samples labels for the statistics, each with the keyword of
      :func:`matopt.sampled_label_grads` it becomes (``{"gn_samples":
      "num_samples", ...}``); empty: the statistics come from the gradient.
  """

  name: str
  factory: Callable[..., optax.GradientTransformation]
  options: Mapping[str, Option]
  update_args: tuple[str, ...] = ()
  model_options: tuple[str, ...] = ()
  stats: Mapping[str, str] = dataclasses.field(default_factory=dict)

  @property
  def settable(self) -> dict[str, Option]:
    """The options YAML can set."""
    return {n: o for n, o in self.options.items() if o.type is not None}

  @property
  def rates(self) -> tuple[str, ...]:
    """Options that are learning rates too, scheduled like ``learning_rate``."""
    return tuple(n for n in self.settable if n.endswith("learning_rate"))

  def refusal(self, option: str) -> str:
    """Why ``option`` cannot come from YAML, and what to do instead."""
    o = self.options[option]
    python = f"{self.factory.__module__.split('.')[0]}.{self.factory.__name__}"
    other = f"{_INSTEAD[option]}; or " if option in _INSTEAD else ""
    return (
      f"{option} takes {type_name(o.annotation)}, a Python object that YAML cannot express "
      f"(its default {o.default!r} is used); {other}build the optimizer in Python: "
      f"{python}(learning_rate, {option}=...)."
    )

  def check_options(self, raw: Mapping[str, Any], where: str) -> dict[str, Any]:
    """The options of a config entry, checked against their types and by the factory itself."""
    unknown = sorted(set(raw) - set(self.options))
    if unknown:
      raise ConfigError(f"{where}: unknown option(s) {unknown}; valid options are {sorted(self.settable)}.")
    for key in raw:
      if self.options[key].type is None:
        raise ConfigError(f"{where}.{key}: {self.refusal(key)}")
    checked = {key: check_value(value, self.options[key].type, f"{where}.{key}") for key, value in raw.items()}
    _check_sampling(checked, where)
    try:
      self.factory(1e-3, **self.kwargs(checked))  # the optimizer's own construction-time checks
    except (ValueError, TypeError) as e:
      raise ConfigError(f"{where}: {e}") from e
    return checked

  def kwargs(self, options: Mapping[str, Any]) -> dict[str, Any]:
    """Checked options as the factory takes them: YAML lists of array options as arrays."""
    return {
      k: np.asarray(v, np.float32) if isinstance(v, list) and self.options[k].array else v
      for k, v in options.items()
      if k not in self.stats
    }

  def sampling(self, options: Mapping[str, Any]) -> dict[str, Any] | None:
    """The keywords of :func:`matopt.sampled_label_grads` under checked
    ``options`` (defaults where unset); None when the entry takes its
    statistics from the gradient itself."""
    if not self.stats:
      return None
    return {kw: options.get(name, self.options[name].default) for name, kw in self.stats.items()}


# The sampling behind Gauss–Newton statistics: the options of the *_gn
# entries, each with the keyword of matopt.sampled_label_grads it sets.
_SAMPLING = {"gn_samples": "num_samples", "gn_fraction": "fraction"}
_SAMPLING_OPTIONS = {
  "gn_samples": Option("gn_samples", int, 1, int),
  "gn_fraction": Option("gn_fraction", float, 1.0, float),
}


def _check_sampling(options: Mapping[str, Any], where: str) -> None:
  """``gn_samples`` a positive int, ``gn_fraction`` in (0, 1] (types already checked)."""
  samples, fraction = options.get("gn_samples", 1), options.get("gn_fraction", 1.0)
  if samples < 1:
    raise ConfigError(
      f"{where}.gn_samples must be a positive int (labels sampled per position for the "
      f"Gauss–Newton statistics), got {samples!r}."
    )
  if not 0 < fraction <= 1:
    raise ConfigError(
      f"{where}.gn_fraction must lie in (0, 1] (the share of each batch's examples whose "
      f"sampled-label gradient is taken), got {fraction!r}."
    )


def _entry(name: str, factory: Callable[..., Any], **kwargs: Any) -> Entry:
  return Entry(name, factory, options_of(factory), **kwargs)


_BASELINES = {"adamw": optax.adamw, "adam": optax.adam, "sgd": optax.sgd}

CATALOGUE: dict[str, Entry] = {
  **{name: _entry(name, factory) for name, factory in _BASELINES.items()},
  **{
    info.name: _entry(info.name, info.factory, update_args=info.update_args, model_options=info.model_options)
    for info in OPTIMIZERS.values()
  },
}


def _gauss_newton(entry: Entry) -> Entry:
  """``entry`` (Shampoo, SOAP) with statistics from sampled labels: every option of
  its factory, plus ``gn_samples`` and ``gn_fraction``."""
  return dataclasses.replace(
    entry, name=f"{entry.name}_gn", options={**entry.options, **_SAMPLING_OPTIONS}, stats=_SAMPLING
  )


CATALOGUE.update({f"{name}_gn": _gauss_newton(CATALOGUE[name]) for name in ("shampoo", "soap")})


def multiplier(config: Schedule, steps: int) -> optax.Schedule:
  """The learning-rate multiplier at a step, from optax's schedule functions.

  A linear warmup from ``1/warmup_steps`` (step 0) to 1 (step
  ``warmup_steps - 1``), then constant, or a linear or cosine decay that
  reaches ``final_fraction`` at ``steps`` (``optax.join_schedules`` of
  ``optax.linear_schedule`` and ``optax.cosine_decay_schedule``).
  """
  warmup, final = config.warmup_steps, config.final_fraction
  span = max(steps - warmup, 1)
  decay = {
    "constant": lambda: optax.constant_schedule(1.0),
    "linear": lambda: optax.linear_schedule(1.0, final, span),
    "cosine": lambda: optax.cosine_decay_schedule(1.0, span, alpha=final),
  }[config.decay]()
  if not warmup:
    return decay
  return optax.join_schedules([optax.linear_schedule(1.0 / warmup, 1.0, warmup - 1), decay], [warmup])


def build(
  name: str,
  learning_rate: float,
  options: Mapping[str, Any],
  *,
  schedule: Schedule,
  steps: int,
  model_options: Mapping[str, Any] | None = None,
) -> optax.GradientTransformation:
  """The optimizer ``name`` with every learning rate it takes scheduled.

  Args:
    name: a :data:`CATALOGUE` name.
    learning_rate: the peak learning rate.
    options: the config entry's checked options.
    schedule: the config's schedule (multiplies every learning rate).
    steps: training steps (where the decay ends).
    model_options: the task's ``model_options()``; those the optimizer lists
      in ``model_options`` and ``options`` does not set are used.
  """
  entry = CATALOGUE[name]
  mult = multiplier(schedule, steps)
  kwargs = {k: v for k, v in (model_options or {}).items() if k in entry.model_options}
  kwargs.update(entry.kwargs(options))
  for rate in entry.rates:
    base = kwargs.get(rate, entry.options[rate].default)
    if base is None:
      continue  # derived from learning_rate by the optimizer (Muon's AdamW rate): already scheduled
    kwargs[rate] = lambda step, base=base: base * mult(step)
  return entry.factory(lambda step: learning_rate * mult(step), **kwargs)
