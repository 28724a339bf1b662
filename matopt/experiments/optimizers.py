"""The optimizers a config may name, with the options each accepts.

matopt's own optimizers take their options from their signatures (so a new
keyword is configurable at once); optax's baselines list theirs here. Options
that are Python objects (label functions, dimension numbers, auxiliary
transforms) are not configurable from YAML.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from collections.abc import Callable, Mapping
from typing import Any

import jax.numpy as jnp
import optax

import matopt
from matopt.experiments.config import ConfigError, Schedule, matches, type_name

# Not settable from YAML: Python objects.
_NOT_CONFIGURABLE = ("labels", "aux", "dimension_numbers", "mask", "mu_dtype")

_ANNOTATION_TYPES = {
    "int": int, "float": float, "bool": bool, "str": str, "None": type(None),
    "ArrayLike": list, "optax.ScalarOrSchedule": float,
    "Mapping[str, str]": Mapping, "Mapping[str, float]": Mapping,
}


def _annotation(text: str) -> Any:
  parts = [p.strip() for p in text.split("|")]
  types_ = [_ANNOTATION_TYPES[p] for p in parts if p in _ANNOTATION_TYPES]
  if len(types_) != len(parts):
    return None  # an annotation YAML cannot express
  return typing.Union[tuple(types_)] if len(types_) > 1 else types_[0]


@dataclasses.dataclass(frozen=True)
class Entry:
  """A configurable optimizer: ``factory(learning_rate, **options)``."""

  factory: Callable[..., optax.GradientTransformation]
  options: Mapping[str, Any]  # option → annotation
  defaults: Mapping[str, Any]
  # Options that are learning rates too, scheduled like ``learning_rate``.
  rates: tuple[str, ...] = ()
  # Defaults the runner fills from the task (Scion's recipe, QK-clip's heads).
  task_defaults: tuple[str, ...] = ()
  # update() takes the model's per-head largest attention logits (QK-clip).
  needs_max_logits: bool = False

  def check_options(self, raw: Mapping[str, Any], where: str) -> dict[str, Any]:
    unknown = sorted(set(raw) - set(self.options))
    if unknown:
      raise ConfigError(f"{where}: unknown option(s) {unknown}; valid options are {sorted(self.options)}.")
    for key, value in raw.items():
      if not matches(value, self.options[key]):
        raise ConfigError(f"{where}.{key} must be {type_name(self.options[key])}, got {type(value).__name__} {value!r}.")
    try:
      self.factory(1e-3, **raw)  # the optimizer's own construction-time checks
    except (ValueError, TypeError) as e:
      raise ConfigError(f"{where}: {e}") from e
    return dict(raw)


def _from_signature(factory: Callable, **kwargs: Any) -> Entry:
  options, defaults = {}, {}
  for name, p in inspect.signature(factory).parameters.items():
    if name == "learning_rate" or name in _NOT_CONFIGURABLE:
      continue
    tp = _annotation(p.annotation) if isinstance(p.annotation, str) else None
    if tp is None:
      continue
    options[name], defaults[name] = tp, p.default
  rates = tuple(n for n in options if n.endswith("learning_rate"))
  return Entry(factory, options, defaults, rates=rates, **kwargs)


_ADAM_OPTIONS = {"b1": float, "b2": float, "eps": float}

CATALOGUE: dict[str, Entry] = {
    "adamw": Entry(optax.adamw, {**_ADAM_OPTIONS, "weight_decay": float, "nesterov": bool},
                   {"b1": 0.9, "b2": 0.999, "eps": 1e-8, "weight_decay": 1e-4, "nesterov": False}),
    "adam": Entry(optax.adam, {**_ADAM_OPTIONS, "nesterov": bool},
                  {"b1": 0.9, "b2": 0.999, "eps": 1e-8, "nesterov": False}),
    "sgd": Entry(optax.sgd, {"momentum": float | None, "nesterov": bool}, {"momentum": None, "nesterov": False}),
    "muon": _from_signature(matopt.muon),
    "muon_clip": _from_signature(matopt.muon_clip, task_defaults=("query", "key", "head_dim"), needs_max_logits=True),
    "normuon": _from_signature(matopt.normuon),
    "adamuon": _from_signature(matopt.adamuon),
    "scion": _from_signature(matopt.scion, task_defaults=("recipe",)),
    "unconstrained_scion": _from_signature(matopt.unconstrained_scion, task_defaults=("recipe",)),
    "shampoo": _from_signature(matopt.shampoo),
    "soap": _from_signature(matopt.soap),
    "signum": _from_signature(matopt.signum),
    "nsgd": _from_signature(matopt.nsgd),
    "clipped_sgd": _from_signature(matopt.clipped_sgd),
}


def multiplier(schedule: Schedule, steps: int) -> Callable[[Any], Any]:
  """Learning-rate multiplier at a step: linear warmup to 1, then constant,
  linear or cosine decay to ``final_fraction`` at ``steps``."""
  warmup, final = schedule.warmup_steps, schedule.final_fraction

  def fn(step):
    step = jnp.asarray(step, jnp.float32)
    frac = jnp.clip((step - warmup) / max(steps - warmup, 1), 0.0, 1.0)
    if schedule.decay == "linear":
      decay = 1.0 - (1.0 - final) * frac
    elif schedule.decay == "cosine":
      decay = final + (1.0 - final) * 0.5 * (1.0 + jnp.cos(jnp.pi * frac))
    else:
      decay = jnp.ones_like(frac)
    if warmup:
      return jnp.where(step < warmup, (step + 1) / warmup, decay)
    return decay

  return fn


def build(
    name: str,
    learning_rate: float,
    options: Mapping[str, Any],
    *,
    schedule: Schedule,
    steps: int,
    task_defaults: Mapping[str, Any] = {},  # noqa: B006 (read only)
) -> optax.GradientTransformation:
  """The optimizer ``name`` with every learning rate it takes scheduled."""
  entry = CATALOGUE[name]
  mult = multiplier(schedule, steps)
  kwargs = {k: v for k, v in task_defaults.items() if k in entry.task_defaults}
  kwargs.update(options)
  for rate in entry.rates:
    base = kwargs.get(rate, entry.defaults[rate])
    if base is None:
      continue  # derived from learning_rate by the optimizer (Muon's AdamW rate): already scheduled
    kwargs[rate] = lambda step, base=base: base * mult(step)
  return entry.factory(lambda step: learning_rate * mult(step), **kwargs)
