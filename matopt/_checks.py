"""Construction-time checks of hyperparameters, tolerant of traced values.

Under ``optax.inject_hyperparams`` numeric options arrive as arrays (possibly
tracers); only concrete Python/NumPy numbers can be checked, so arrays pass.
"""

from __future__ import annotations

import math
import numbers


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


def check_bool(name: str, value: object) -> None:
  """Raises a ValueError unless ``value`` is ``True`` or ``False`` (1 or "yes" are typos, not flags)."""
  if not isinstance(value, bool):
    raise ValueError(f"{name} must be True or False, got {value!r}.")


def check_learning_rate(name: str, value: object) -> None:
  """Raises a ValueError unless ``value`` is a finite number, an array or a schedule (a callable).

  A negative rate is allowed (gradient ascent is a legitimate use); NaN or
  infinity would silently poison every parameter on the first step.
  """
  if callable(value):
    return
  if isinstance(value, (bool, str, bytes)) or value is None:
    raise ValueError(f"{name} must be a number or a schedule (a callable of the step), got {value!r}.")
  if isinstance(value, numbers.Real) and not math.isfinite(value):
    raise ValueError(f"{name} must be finite, got {value!r}.")
