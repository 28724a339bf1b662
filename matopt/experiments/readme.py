"""Result tables in Markdown files, regenerated from committed ``results.json`` files.

A Markdown file (the README) marks each generated table with a pair of HTML
comments, each on a line of its own::

  <!-- matopt:table docs/quickstart/results.json -->
  ...generated; edits here are overwritten...
  <!-- /matopt:table -->

the path relative to the Markdown file's directory, naming the
``results.json`` that ``matopt run`` or ``matopt report`` wrote. ``matopt
readme`` (:func:`update`) replaces what lies between the markers with
:func:`table` of that file; ``matopt readme --check`` only says which blocks
differ, so a test or CI job fails when a committed table and its committed
results disagree. Markers inside fenced code blocks are examples, not blocks.

The table is compact (optimizer, learning rate, final val loss, steps to the
baseline's loss, equivalent-data and -time speedups, throughput) and uses
:mod:`~matopt.experiments.report`'s cells, so they read as
``results.md``'s do: ``mean ± std`` over seeds, bounds as ``>4``. No JAX.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from matopt.experiments import metrics as metrics_lib
from matopt.experiments import report

_OPEN = re.compile(r"^\s*<!--\s*matopt:table\s+(?P<path>\S+)\s*-->\s*$")
_CLOSE = re.compile(r"^\s*<!--\s*/matopt:table\s*-->\s*$")
_FENCE = re.compile(r"^\s*(```|~~~)")
_SPEEDUPS = ("data_speedup", "time_speedup")


class ReadmeError(Exception):
  """A marker without its end, a results file that is missing or unreadable; names the file and line."""


class Block(NamedTuple):
  """One marked table in a Markdown file.

  Attributes:
    source: the Markdown file.
    line: the opening marker's line (1-based).
    results: the ``results.json`` it names, resolved against ``source``'s directory.
    marked: the path as the marker writes it.
    old: the text between the markers now.
    new: the text :func:`table` makes of ``results``.
  """

  source: Path
  line: int
  results: Path
  marked: str
  old: str
  new: str

  @property
  def stale(self) -> bool:
    return self.old != self.new


def _speedup_cell(r: Mapping[str, Any], key: str, multi: bool) -> str:
  """:func:`metrics.format_speedups` over seeds; one seed's :func:`metrics.format_speedup` (a bound stays a bound)."""
  runs = r.get("runs") or []
  if not multi and len(runs) == 1 and runs[0].get(key):
    return metrics_lib.format_speedup(metrics_lib.Speedup(**runs[0][key]))
  s = (r.get("summaries") or {}).get(key)
  if s is not None:
    return metrics_lib.format_speedups(metrics_lib.speedups_from_json(s))
  return metrics_lib.format_value(r.get(key), 3)


def _lr_cell(r: Mapping[str, Any]) -> str:
  """The chosen learning rate, the other tuned options' values, and of how many grid points."""
  tuned = ", ".join(
    f"{k.removeprefix('schedule.')}={metrics_lib.format_value(v) if isinstance(v, float) else v}"
    for k, v in (r.get("tuned") or {}).items()
  )
  notes = [f"best of {len(r['grid'])}"] if len(r.get("grid") or []) > 1 else []
  if (r.get("tuning") or {}).get("at_edge"):
    notes.append("at the grid's edge")
  text = metrics_lib.format_value(r["learning_rate"]) + (f", {tuned}" if tuned else "")
  return text + (f" ({', '.join(notes)})" if notes else "")


def _has(records: Sequence[Mapping[str, Any]], key: str) -> bool:
  """Whether some record measured ``key`` (a None mean still counts: every seed out of range or not reached)."""
  return any(key in r for r in records)


def _sorted(records: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
  """Best mean final validation loss first; records without one (every seed diverged) last, in file order."""
  return sorted(records, key=lambda r: (r.get("final_val_loss") is None, r.get("final_val_loss") or 0.0))


def _baseline(records: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
  """The baseline's record, when the records were measured against one."""
  name = next((r["baseline"] for r in records if r.get("baseline")), None)
  return next((r for r in records if r["optimizer"] == name), None)


def table(records: Sequence[Mapping[str, Any]], *, loss_unit: str | None = None, source: str | None = None) -> str:
  """A compact Markdown table of ``results.json``'s records, with a caption under it.

  Columns: optimizer, learning rate (and other tuned options), final val loss,
  then steps to the baseline's loss and the data and time speedups when the
  records have them, and throughput. With several seeds a cell is mean ±
  sample std (:func:`metrics.format_summary`, :func:`metrics.format_speedups`).

  Args:
    records: the list ``results.json`` holds (:func:`matopt.experiments.report.render`).
    loss_unit: what a loss is measured in (``nats/byte``), said in the caption.
    source: the results file's path as the caption should name it.

  Returns:
    The table and caption, ending in a newline.

  Raises:
    ValueError: no records.
  """
  if not records:
    raise ValueError("results.json holds no records: no optimizer finished a run.")
  multi = any(r.get("n_seeds", 1) > 1 for r in records)
  base = _baseline(records)
  name = base["optimizer"] if base else None
  targets = name is not None and _has(records, "steps_to_target")
  speedups = name is not None and any(_has(records, key) for key in _SPEEDUPS)
  unit = next((r["throughput_unit"] for r in records if r.get("throughput_unit")), "throughput")
  head = [
    "optimizer",
    "learning rate",
    "final val loss",
    *([f"steps to {name}'s loss"] if targets else []),
    *(["data speedup", "time speedup"] if speedups else []),
    unit,
  ]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for r in _sorted(records):
    optimizer = r["optimizer"]
    if r.get("diverged"):
      optimizer += f" (diverged: {r['diverged_seeds']}/{r['n_seeds']} seeds)" if multi else " (diverged)"
    cells = [optimizer, _lr_cell(r), report.cell(r, "final_val_loss", 3, multi)]
    if targets:
      cells.append(report.cell(r, "steps_to_target", 0, multi, missing="not reached"))
    if speedups:
      cells += [_speedup_cell(r, key, multi) for key in _SPEEDUPS]
    cells.append(report.cell(r, "throughput", 0, multi, 3))
    lines.append("| " + " | ".join(cells) + " |")
  return (
    "\n".join(
      [
        *lines,
        "",
        *_caption(records, base, multi=multi, loss_unit=loss_unit, source=source, targets=targets, speedups=speedups),
      ]
    )
    + "\n"
  )


def _caption(
  records: Sequence[Mapping[str, Any]],
  base: Mapping[str, Any] | None,
  *,
  multi: bool,
  loss_unit: str | None,
  source: str | None,
  targets: bool,
  speedups: bool,
) -> list[str]:
  """What the table's cells mean: the sort, the seeds, the baseline and its speedups, the units."""
  seeds = sorted({s for r in records for s in r.get("seeds") or []})
  losses = f" (in {loss_unit})" if loss_unit else ""
  origin = f" from `{source}`" if source else ""
  lines = [f"Sorted by {'mean ' if multi else ''}final val loss{losses}; generated{origin} by `matopt readme`."]
  if multi:
    lines.append(
      f"Each cell is the mean ± sample std over {len(seeds)} seeds ({', '.join(map(str, seeds))}; "
      f"n={len(seeds)} unless noted)."
    )
  else:
    lines.append(f"One seed{f' ({seeds[0]})' if len(seeds) == 1 else ''} per optimizer: single values, no spread.")
  if base is not None and (targets or speedups):
    name, steps = base["optimizer"], base["steps"]
    if targets:
      lines.append(
        f"Steps to {name}'s loss: where the val loss first reaches {name}'s "
        f"{'mean ' if multi else ''}final val loss {metrics_lib.format_value(base.get('target_val_loss'))}, interpolated "
        f"between evaluations (not reached: not within {steps} steps)."
      )
    if speedups:
      factors = [1, *sorted(h["steps"] / steps for h in base.get("horizons") or [])]
      runs = (
        f", interpolated in log steps between {name} runs of {', '.join(f'{metrics_lib.format_value(f)}×' for f in factors)} "
        "the steps"
        if len(factors) > 1
        else ""
      )
      lines.append(
        f"Data speedup: the equivalent-data speedup of Wen et al. (2025), the steps {name} needs to reach "
        f"an optimizer's final val loss over the optimizer's {steps} steps{runs}, "
        f"{'seed by seed' if multi else 'one seed'}; > and < are bounds outside the measured range. "
        "Time speedup: the same in training seconds."
      )
  if any(r.get("throughput") is not None for r in records):
    unit = next((r["throughput_unit"] for r in records if r.get("throughput_unit")), None)
    lines.append(f"Throughput{f' ({unit})' if unit else ''} counts training steps only, not compilation or evaluation.")
  return lines


def load(results: Path) -> tuple[list[dict], str | None]:
  """The records of a ``results.json`` and the loss unit of the ``meta.json`` beside it, if any.

  Raises:
    ReadmeError: the file is missing, not JSON, or not a list of records.
  """
  if not results.is_file():
    raise ReadmeError(f"{results} does not exist (commit the results.json of a `matopt run`, or fix the path)")
  try:
    records = json.loads(results.read_text())
  except json.JSONDecodeError as e:
    raise ReadmeError(f"{results} is not JSON: {e}") from e
  if not isinstance(records, list) or not all(isinstance(r, dict) and "optimizer" in r for r in records):
    raise ReadmeError(f"{results} is not a results.json of `matopt run` (a list of optimizer records)")
  meta = results.with_name("meta.json")
  unit = json.loads(meta.read_text()).get("loss_unit") if meta.is_file() else None
  return records, unit


def _block_text(results: Path, marked: str) -> str:
  records, unit = load(results)
  if not records:
    raise ReadmeError(f"{results} holds no records: no optimizer finished a run")
  # Blank lines around the table: a Markdown table must start a block of its own.
  return "\n" + table(records, loss_unit=unit, source=marked) + "\n"


def blocks(text: str, *, source: Path) -> list[Block]:
  """The marked blocks of ``text`` (the contents of the Markdown file ``source``), each with its regenerated text.

  Raises:
    ReadmeError: ``source:LINE: ...`` for an opening marker without its end
      (or another opening before it), an end without an opening, or a
      results file that is missing or unreadable.
  """
  lines = text.splitlines(keepends=True)
  found, open_at, fenced = [], None, False
  for i, line in enumerate(lines):
    if open_at is None and _FENCE.match(line):
      fenced = not fenced
    if fenced:
      continue
    if (match := _OPEN.match(line)) is not None:
      if open_at is not None:
        raise ReadmeError(
          f"{source}:{open_at[0] + 1}: `<!-- matopt:table {open_at[1]} -->` has no "
          f"`<!-- /matopt:table -->` before the next table marker on line {i + 1}"
        )
      open_at = (i, match["path"])
    elif _CLOSE.match(line):
      if open_at is None:
        raise ReadmeError(
          f"{source}:{i + 1}: `<!-- /matopt:table -->` without a `<!-- matopt:table PATH -->` before it"
        )
      start, marked = open_at
      results = source.parent / marked
      try:
        new = _block_text(results, marked)
      except ReadmeError as e:
        raise ReadmeError(f"{source}:{start + 1}: {e}") from e
      found.append(Block(source, start + 1, results, marked, "".join(lines[start + 1 : i]), new))
      open_at = None
  if open_at is not None:
    raise ReadmeError(
      f"{source}:{open_at[0] + 1}: `<!-- matopt:table {open_at[1]} -->` has no `<!-- /matopt:table -->` after it"
    )
  return found


def regenerate(text: str, *, source: Path) -> tuple[str, list[Block]]:
  """``text`` with every marked block's contents replaced by its table; the blocks.

  Text outside the blocks, and the markers themselves, are kept byte for byte.
  """
  lines = text.splitlines(keepends=True)
  found = blocks(text, source=source)
  out, at = [], 0
  for block in found:
    first = block.line  # the 0-based index of the first line inside the block
    out += [*lines[at:first], block.new]
    at = first + len(block.old.splitlines(keepends=True))
  out += lines[at:]
  return "".join(out), found


def diff(block: Block) -> str:
  """A unified diff from the block's text to its regenerated text."""
  where = f"{block.source}:{block.line}"
  return "".join(
    difflib.unified_diff(
      block.old.splitlines(keepends=True),
      block.new.splitlines(keepends=True),
      fromfile=f"{where} (committed)",
      tofile=f"{where} (from {block.marked})",
    )
  )


def update(path: Path, *, check: bool = False) -> list[Block]:
  """Regenerate the marked tables of the Markdown file ``path`` (with ``check``, only compare).

  Returns:
    The blocks; those with ``stale`` set differed (and, without ``check``,
    were rewritten).

  Raises:
    ReadmeError: ``path`` is missing, or as :func:`blocks`.
  """
  if not path.is_file():
    raise ReadmeError(f"{path} does not exist")
  text = path.read_text()
  new, found = regenerate(text, source=path)
  if not check and new != text:
    path.write_text(new)
  return found
