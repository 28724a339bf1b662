"""Adding and removing records of a name → record registry (norms, presets).

The registries themselves stay in their modules, each shown read-only as a
``types.MappingProxyType``; these two functions keep their checks and
messages the same.
"""

from __future__ import annotations

from typing import Any, TypeVar

R = TypeVar("R")


def add(registry: dict[str, Any], record: R, *, record_type: type, caller: str, what: str, replace: bool) -> R:
  """Adds ``record`` under ``record.name``; refuses another type, and a taken
  name unless ``replace`` (so two libraries cannot silently shadow each other)."""
  if not isinstance(record, record_type):
    raise TypeError(f"{caller} takes a {record_type.__name__} record, got {record!r}.")
  if record.name in registry and not replace:  # type: ignore[attr-defined]
    raise ValueError(f"A {what} named {record.name!r} is registered already; pass replace=True.")  # type: ignore[attr-defined]
  registry[record.name] = record  # type: ignore[attr-defined]
  return record


def remove(registry: dict[str, Any], name: str, *, what: str) -> Any:
  """Removes and returns the record ``name``."""
  if name not in registry:
    raise ValueError(f"No {what} named {name!r}; registered: {tuple(registry)}.")
  return registry.pop(name)
