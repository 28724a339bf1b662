"""Optimizers that are another optimizer plus a few options of their own."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from typing import Any


def extends(
  base: Callable[..., Any], *, sets: Iterable[str] = ()
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
  """Makes ``variant(learning_rate, *, <own options>, **options)`` take every option of ``base``.

  The variant's body names only its own options and passes ``**options``
  on to ``base``, so a new option of ``base`` reaches every variant without
  being restated (and no variant's copy drifts from the original). Its
  signature, as :func:`inspect.signature` and :func:`typing.get_type_hints`
  report it (and as configuration layers read it), is its own options
  followed by each keyword-only option of ``base`` with its annotation and
  default, except those the variant restates (its defaults win) or
  ``sets`` itself; an unknown option is a TypeError naming the variant.

  Args:
    base: the optimizer extended (its keyword-only options are inherited).
    sets: options of ``base`` the variant fixes itself (e.g. Muon's
      ``adaptive`` for NorMuon): not in the signature, refused if given.

  Returns:
    A decorator for the variant.
  """
  sets = frozenset(sets)

  def decorate(variant: Callable[..., Any]) -> Callable[..., Any]:
    own = inspect.signature(variant)
    params = [p for p in own.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    if len(params) == len(own.parameters):
      raise TypeError(f"{variant.__name__} must take **options to pass on to {base.__name__}.")
    inherited = [
      p
      for name, p in inspect.signature(base).parameters.items()
      if p.kind is inspect.Parameter.KEYWORD_ONLY and name not in own.parameters and name not in sets
    ]
    signature = own.replace(parameters=[*params, *inherited])
    # A real function with that parameter list (as dataclasses writes __init__),
    # so inspect.signature(eval_str=True) and typing.get_type_hints resolve
    # its annotations like any function's: in a namespace holding the names
    # of both modules. Python itself then refuses an unknown or ``sets`` option.
    namespace = {**base.__globals__, **variant.__globals__, "_variant": variant, "_defaults": {}}
    text, call = [], []
    for p in signature.parameters.values():
      if p.kind is inspect.Parameter.KEYWORD_ONLY and "*" not in text:
        text.append("*")
      if p.default is inspect.Parameter.empty:
        text.append(p.name)
      else:
        namespace["_defaults"][p.name] = p.default
        text.append(f"{p.name}=_defaults[{p.name!r}]")
      call.append(f"{p.name}={p.name}")
    exec(f"def {variant.__name__}({', '.join(text)}):\n  return _variant({', '.join(call)})\n", namespace)
    wrapper = namespace[variant.__name__]
    # As written (strings under ``from __future__ import annotations``), like base's own.
    written = {**base.__annotations__, **variant.__annotations__}
    wrapper.__annotations__ = {name: written[name] for name in [*signature.parameters, "return"] if name in written}
    wrapper.__module__, wrapper.__qualname__, wrapper.__doc__ = (
      variant.__module__,
      variant.__qualname__,
      variant.__doc__,
    )
    return wrapper

  return decorate
