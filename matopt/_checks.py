"""Construction-time checks of hyperparameters, tolerant of traced values.

Under ``optax.inject_hyperparams`` numeric options arrive as arrays (possibly
tracers); only concrete Python/NumPy numbers can be checked, so arrays pass.
inject_hyperparams also calls every callable argument as a schedule of the
step count unless it is named in ``static_args``; the checks at the end of
this file turn what that leaves behind into an error that says so.
"""

from __future__ import annotations

import functools
import math
import numbers
import pathlib
import sys
from collections.abc import Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def check_range(
  name: str,
  value: object,
  lo: float,
  hi: float,
  *,
  lo_open: bool = False,
  hi_open: bool = False,
) -> None:
  """Raises a ValueError if a concrete ``value`` is NaN or lies outside the interval."""
  if not isinstance(value, numbers.Real) or isinstance(value, bool):
    if isinstance(value, (bool, str, bytes)) or value is None:
      raise ValueError(f"{name} must be a number, got {value!r}.")
    return
  # NaN compares false with everything, so the interval test below would let it through.
  below = math.isnan(value) or (value <= lo if lo_open else value < lo)
  above = value >= hi if hi_open else value > hi
  if below or above:
    interval = f"{'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
    raise ValueError(f"{name} must lie in {interval}, got {value!r}.")


def is_positive_int(value: object) -> bool:
  """True for a Python or NumPy integer >= 1 (a bool is a flag, not a count)."""
  return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)) and bool(value >= 1)


def check_positive_int(name: str, value: object, *, none_means: str | None = None) -> None:
  """Raises a ValueError unless ``value`` is an int >= 1, or None where ``none_means`` says what None stands for."""
  if value is None and none_means is not None:
    return
  if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
    if value < 1:
      raise ValueError(f"{name} must be >= 1, got {value}.")
    return
  alternative = f" or None ({none_means})" if none_means is not None else ""
  raise ValueError(f"{name} must be a positive int{alternative}, got {value!r} of type {type(value).__name__}.")


def check_bool(name: str, value: object) -> None:
  """Raises a ValueError unless ``value`` is ``True`` or ``False`` (1 or "yes" are typos, not flags)."""
  if not isinstance(value, bool):
    raise ValueError(f"{name} must be True or False, got {value!r}.")


def check_learning_rate(name: str, value: object) -> None:
  """Raises a ValueError unless ``value`` is a finite number ≥ 0, an array or a schedule (a callable).

  NaN or infinity would silently poison every parameter on the first step; a
  negative rate would silently ascend the loss (every optimizer here ends
  with ``optax.scale_by_learning_rate``, which already negates the step), so
  both are refused. Only concrete numbers can be checked: a schedule, or an
  array (what ``optax.inject_hyperparams`` passes), is taken as given.
  """
  if callable(value):
    return
  if isinstance(value, (bool, str, bytes)) or value is None:
    raise ValueError(f"{name} must be a number or a schedule (a callable of the step), got {value!r}.")
  if isinstance(value, numbers.Real) and not math.isfinite(value):
    raise ValueError(f"{name} must be finite, got {value!r}.")
  if isinstance(value, numbers.Real) and value < 0:
    raise ValueError(
      f"{name} must be >= 0, got {value!r}: the optimizers already step against the"
      " gradient. To ascend an objective, negate it (or its gradients) instead."
    )


# --- Options that optax.inject_hyperparams must not touch -------------------

# optax/schedules/_inject.py: ``wrapped_transform`` sorts the factory's
# arguments into ``sched_hps`` (callables, called with the step count) and
# ``numeric_hps`` (numbers and arrays, passed on as arrays) and calls the
# factory from its ``init_fn`` / ``update_fn`` closures. Reading those two
# dicts from the calling frame is the only way to tell a label function that
# was called as a schedule from a legitimate value it happened to return
# (``None`` or one ``DimensionNumbers`` for a scalar step); if optax renames
# them, this finds nothing and the value checks below still apply.
_INJECT_FILE = ("optax", "schedules", "_inject.py")
_INJECT_FRAMES = ("init_fn", "update_fn")


def _inject_frame(depth: int = 12) -> Any:
  """The frame of an enclosing ``optax.inject_hyperparams`` ``init_fn`` / ``update_fn``, or None.

  Looks at most ``depth`` frames up (the factory may be called through
  another, such as :func:`matopt.normuon` through :func:`matopt.muon`), and
  only for inject_hyperparams wrapping a matopt factory (or a
  ``functools.partial`` of one).
  """
  frame = sys._getframe(1)
  for _ in range(depth):
    frame = frame.f_back
    if frame is None:
      return None
    code = frame.f_code
    if code.co_name in _INJECT_FRAMES and pathlib.PurePath(code.co_filename).parts[-3:] == _INJECT_FILE:
      # Only when it wraps a matopt factory: a user's own factory may name its
      # arguments anything (its "steps" need not be ours).
      factory = frame.f_locals.get("inner_factory")
      while isinstance(factory, functools.partial):
        factory = factory.func
      return frame if getattr(factory, "__module__", "").startswith("matopt.") else None
  return None


def injected_arguments() -> tuple[frozenset[str], frozenset[str]]:
  """The argument names an enclosing ``optax.inject_hyperparams`` treats as (schedules, numbers).

  Empty sets outside inject_hyperparams; the numbers are known only while
  ``init`` runs (``update`` reads them from the state).
  """
  frame = _inject_frame()
  if frame is None:
    return frozenset(), frozenset()
  scheduled, numeric = frame.f_locals.get("sched_hps"), frame.f_locals.get("numeric_hps")
  return (
    frozenset(scheduled) if isinstance(scheduled, dict) else frozenset(),
    frozenset(numeric) if isinstance(numeric, dict) else frozenset(),
  )


def _factory_name(default: str) -> str:
  """The name of the factory inject_hyperparams wraps (the one the user named), else ``default``."""
  frame = _inject_frame()
  name = getattr(frame.f_locals.get("inner_factory"), "__name__", None) if frame is not None else None
  return name if isinstance(name, str) and name.isidentifier() else default


def _static_args_hint(factory: str, name: str) -> str:
  factory = _factory_name(factory)
  return (
    f" Under optax.inject_hyperparams, which calls every callable argument as a schedule of"
    f" the step and passes every number on as an array, name it in static_args:"
    f" optax.inject_hyperparams(matopt.{factory}, static_args=({name!r},))."
  )


def check_not_injected(factory: str, names: Iterable[str], *, numbers_too: bool = False) -> None:
  """Raises a ValueError if inject_hyperparams scheduled (or, with ``numbers_too``, injected) an option.

  Args:
    factory: the public factory's name, for the message.
    names: options whose callables are not schedules (label functions,
      dimension numbers, masks), or, with ``numbers_too``, options that fix
      shapes or Python control flow (iteration counts, head layouts).
    numbers_too: also refuse options injected as numbers.
  """
  scheduled, numeric = injected_arguments()
  for name in names:
    if name in scheduled or (numbers_too and name in numeric):
      kind = "a callable" if name in scheduled else "a number"
      raise ValueError(
        f"{factory}: {name} was given to optax.inject_hyperparams as {kind},"
        f" but it is not a hyperparameter to inject." + _static_args_hint(factory, name)
      )


def check_static_int(factory: str, name: str, value: object) -> None:
  """Raises a ValueError naming ``static_args`` if an int-valued (shape) option arrived as an array."""
  if isinstance(value, (jax.Array, np.ndarray, np.generic)) and not isinstance(value, np.integer):
    raise ValueError(
      f"{factory}: {name} fixes shapes or loop counts and must be a Python int (or None),"
      f" got the array {value!r}." + _static_args_hint(factory, name)
    )


def _is_bool(x: Any) -> bool:
  return isinstance(x, (bool, np.bool_)) or (isinstance(x, (jax.Array, np.ndarray)) and x.dtype == bool and x.ndim == 0)


def check_labels(factory: str, labels: object) -> None:
  """Raises a ValueError unless ``labels`` is None, a callable, or a pytree of role strings.

  A bare string (``"vector"``, which :func:`matopt.labels.by_role` returns
  when inject_hyperparams calls it with the step count) or a bare number is
  refused: one role for every leaf would send vectors to matrix methods.
  """
  if labels is None or callable(labels):
    return
  leaves = jax.tree.leaves(labels)
  bare = len(leaves) == 1 and leaves[0] is labels
  if bare or not all(isinstance(leaf, str) for leaf in leaves):
    raise ValueError(
      f"{factory}: labels must be a label function (such as matopt.labels.by_role) or a"
      f" pytree of role strings with the params' structure, got {labels!r}." + _static_args_hint(factory, "labels")
    )


def check_mask(factory: str, name: str, mask: object) -> None:
  """Raises a ValueError unless ``mask`` is None, a callable, or a pytree of bools.

  A bare bool or array is refused: it is what a mask function leaves behind
  when inject_hyperparams calls it with the step count.
  """
  if mask is None or callable(mask):
    return
  leaves = jax.tree.leaves(mask)
  bare = len(leaves) == 1 and leaves[0] is mask
  if bare or not all(_is_bool(leaf) for leaf in leaves):
    raise ValueError(
      f"{factory}: {name} must be a callable of the params or a pytree of bools with the"
      f" params' structure (True: decay the leaf), got {mask!r}." + _static_args_hint(factory, name)
    )


# Option checks shared by Shampoo and SOAP. ``optax.inject_hyperparams`` binds
# every numeric argument, defaults included, as an array (a tracer inside
# ``jit``): options that only enter arithmetic accept that; options that fix
# state shapes cannot, and say how to keep them static.


def static_size(name: str, value: object, default: int) -> int:
  """A shape-fixing option: an int >= 1, or ``None`` for ``default``."""
  if value is None:
    return default
  if isinstance(value, (jax.Array, np.ndarray, np.generic)):
    raise ValueError(
      f"{name} fixes the shapes of the optimizer state and cannot be an array, got {value!r}."
      f" Under optax.inject_hyperparams list it in static_args=({name!r},), or leave it None"
      f" (default {default})."
    )
  if not is_positive_int(value):
    raise ValueError(f"{name} must be an int >= 1 or None (default {default}), got {value!r}.")
  return value


def check_step_option(name: str, value: object) -> None:
  """A period or step number: an int >= 1, or a scalar integer array (as
  ``optax.inject_hyperparams`` passes it; checked when concrete)."""
  if isinstance(value, (jax.Array, np.ndarray, np.generic)) and not isinstance(value, (bool, np.bool_)):
    if jnp.ndim(value) or not jnp.issubdtype(jnp.result_type(value), jnp.integer):
      raise ValueError(f"{name} must be an int >= 1 (or a scalar integer array), got {value!r}.")
    if not isinstance(value, jax.core.Tracer) and int(value) < 1:
      raise ValueError(f"{name} must be an int >= 1, got {value!r}.")
    return
  if not is_positive_int(value):
    raise ValueError(f"{name} must be an int >= 1, got {value!r}.")
