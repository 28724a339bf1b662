"""Construction-time checks of hyperparameters, tolerant of traced values.

Under ``optax.inject_hyperparams`` numeric options arrive as arrays (possibly
tracers); only concrete Python/NumPy numbers can be checked, so arrays pass.
"""

from __future__ import annotations

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
  """Raises a ValueError if a concrete ``value`` lies outside the interval."""
  if not isinstance(value, numbers.Real) or isinstance(value, bool):
    if isinstance(value, bool) or isinstance(value, (str, bytes)) or value is None:
      raise ValueError(f"{name} must be a number, got {value!r}.")
    return
  below = value <= lo if lo_open else value < lo
  above = value >= hi if hi_open else value > hi
  if below or above:
    interval = f"{'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
    raise ValueError(f"{name} must lie in {interval}, got {value!r}.")
