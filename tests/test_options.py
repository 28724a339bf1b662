"""Every public factory rejects a bad hyperparameter at construction, naming it.

The options are found from the signatures, so a new optimizer or option is
covered without being listed here: a float option is tried with NaN, a
negative value, a string and a bool; an int option with 0, 1.5, a string and a
bool; a flag with ``"yes"`` and ``1``; a choice with an unknown name; a learning
rate with NaN, infinity, a negative value and a string. Each must raise a ValueError whose message names
the option (or, for a choice, lists the valid ones).
"""

import inspect
import math

import jax.numpy as jnp
import optax
import pytest

import matopt

# A public factory is a registered optimizer or one of matopt.transforms'.
TRANSFORMS = tuple(
  n
  for n in matopt.transforms.__all__
  if "optax.GradientTransformation" in str(inspect.signature(getattr(matopt.transforms, n)).return_annotation)
)
FACTORIES = tuple(sorted((*matopt.OPTIMIZERS, *TRANSFORMS)))
REQUIRED = {"learning_rate": 1e-3, "max_norm": 1.0, "norm": "spectral", "transforms": {"hidden": optax.identity()}}
# Free-form names (attention submodules are whatever the model calls them):
# they can only be checked against params, at update time (tests/transforms/test_qk_clip.py).
FREE_TEXT = {(f, o) for f in ("qk_clip", "muon_clip") for o in ("query", "key")}


def _bad_values(annotation: str) -> list:
  if "ScalarOrSchedule" in annotation:
    return [math.nan, math.inf, -1e-3, "x"]
  if annotation.startswith("float"):
    return [math.nan, -1.0, "x", True]
  if annotation.startswith("int"):
    return [0, 1.5, "x", True]
  if annotation == "bool":
    return ["yes", 1]
  if annotation.startswith("str"):
    return ["bogus", 3]
  return []


def _cases():
  for name in FACTORIES:
    signature = inspect.signature(getattr(matopt, name))
    for option, parameter in signature.parameters.items():
      if (name, option) in FREE_TEXT:
        continue
      for value in _bad_values(str(parameter.annotation)):
        yield pytest.param(name, option, str(parameter.annotation), value, id=f"{name}-{option}={value!r}")


def test_every_factory_is_public_and_checked():
  public = {n for n in matopt.__all__ if callable(getattr(matopt, n))}
  factories = {
    n for n in public if "optax.GradientTransformation" in str(inspect.signature(getattr(matopt, n)).return_annotation)
  }
  assert factories == set(FACTORIES), (
    "register new optimizers in matopt.OPTIMIZERS; export transforms from matopt.transforms"
  )


@pytest.mark.parametrize("name, option, annotation, value", list(_cases()))
def test_bad_option_raises_naming_it(name, option, annotation, value):
  factory = getattr(matopt, name)
  signature = inspect.signature(factory)
  kwargs = {k: REQUIRED[k] for k, p in signature.parameters.items() if p.default is inspect.Parameter.empty}
  kwargs[option] = value
  with pytest.raises(ValueError) as info:
    factory(**kwargs)
  message = str(info.value)
  choice = annotation.startswith("str") and "valid" in message
  assert option in message or choice, message


@pytest.mark.parametrize("name", ["muon", "signum", "scion", "soap"])
def test_array_and_schedule_learning_rates_pass(name):
  # Under inject_hyperparams options arrive as arrays; schedules are callables.
  factory = getattr(matopt, name)
  factory(jnp.asarray(1e-3))
  factory(optax.linear_schedule(1e-3, 0.0, 10))
  optax.inject_hyperparams(factory)(learning_rate=1e-3)
  factory(0.0)  # a frozen run is legitimate; a negative rate is not (test_bad_option_raises_naming_it)
