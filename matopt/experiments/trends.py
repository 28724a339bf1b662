"""Trends across model sizes: what a ``sizes:`` run directory adds up to.

A sizes run (:mod:`matopt.experiments.sizes`) leaves one ordinary output
directory per size under ``DIR/sizes/``. :func:`render` re-renders each of
them (:func:`matopt.experiments.report.render`), then writes, in ``DIR``:

- ``trends.json``: per size, its value, parameters, steps and units, and the
  records of its ``results.json``; per optimizer, the interpolated best
  learning rate at each size and the slope of its logarithm against the
  size's (the learning-rate transfer exponent);
- ``results.md``: final loss, speedup over the baseline and best learning
  rate, a row per size and a column per optimizer;
- ``loss_vs_params.png``; ``speedup_vs_params.png`` when the sizes measured
  speedups (``speedup_horizons``); ``lr_transfer.png``, a panel per
  optimizer with its learning-rate curve at every size, when they tuned grids.

Nothing here needs JAX or retrains: ``matopt report DIR`` calls :func:`render`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from matopt.experiments import collect as collect_lib
from matopt.experiments import metrics as metrics_lib
from matopt.experiments import report

FILES = ("trends.json", "loss_vs_params.png", "speedup_vs_params.png", "lr_transfer.png")


def _sizes(out: Path, rerender: bool) -> list[dict[str, Any]]:
  """Each size of ``out`` (meta.json) with its records (none yet: an empty list): re-rendered
  from its runs, or, when ``rerender`` is False, its ``results.json`` as ``matopt run`` just wrote it."""
  sizes = []
  for info in collect_lib.read_json(out / "meta.json")["sizes"]:
    directory = out / info["dir"]
    if not rerender:
      records = collect_lib.read_json(directory / "results.json")
    elif (directory / "config.json").is_file() and (directory / "meta.json").is_file():
      records = report.render(directory)
    else:
      records = []
    sizes.append({**info, "records": records})
  return sizes


def _baseline(sizes: Sequence[Mapping[str, Any]]) -> str | None:
  """The baseline the sizes' records were measured against, if any."""
  return next((r.get("baseline") for s in sizes for r in s["records"] if r.get("baseline")), None)


def _optimizers(sizes: Sequence[Mapping[str, Any]]) -> list[str]:
  return list(dict.fromkeys(r["optimizer"] for s in sizes for r in s["records"]))


def _record(size: Mapping[str, Any], name: str) -> Mapping[str, Any] | None:
  return next((r for r in size["records"] if r["optimizer"] == name), None)


def _grid_line(record: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """The learning-rate curve at the record's other tuned values: rates, mean and std of the final loss."""
  tuned = record.get("tuned", {})
  points = [p for p in record.get("grid", []) if all(p.get(k) == v for k, v in tuned.items())]
  points.sort(key=lambda p: p["learning_rate"])
  lrs = np.asarray([p["learning_rate"] for p in points], dtype=float)
  loss = np.asarray([np.nan if p["final_val_loss"] is None else p["final_val_loss"] for p in points], dtype=float)
  std = np.asarray([p.get("final_val_loss_std") or 0.0 for p in points], dtype=float)
  return lrs, loss, std


def best_learning_rate(record: Mapping[str, Any]) -> float | None:
  """The learning rate at the minimum of the parabola through the grid's best point
  and its neighbours in log learning rate (:func:`metrics.parabola_minimum`)."""
  lrs, loss, _ = _grid_line(record)
  if not len(lrs):
    return None
  x = metrics_lib.parabola_minimum(np.log2(lrs), loss)
  return None if x is None else float(2.0**x)


def transfer_slope(values: Sequence[float], rates: Sequence[float | None]) -> float | None:
  r"""The least-squares slope of :math:`\log_2` (best learning rate) against :math:`\log_2` (size).

  0 means the best learning rate stays put as the model grows (it transfers);
  −1 means it halves at every doubling (AdamW's hidden layers under standard
  parametrisation, Yang et al. 2022, "Tensor Programs V"). None with fewer
  than two sizes that have a rate.
  """
  pairs = [(math.log2(v), math.log2(r)) for v, r in zip(values, rates) if r is not None and v > 0]
  if len(pairs) < 2:
    return None
  x, y = np.asarray(pairs).T
  return float(np.polyfit(x, y, 1)[0])


def collect(out: str | Path, *, rerender_sizes: bool = True) -> dict[str, Any]:
  """The sizes of ``out`` with their records, and each optimizer's best rates and transfer slope.

  ``rerender_sizes=False`` reads each size's ``results.json`` instead of
  rebuilding it (:func:`matopt.experiments.sizes.run` has just written them).
  """
  out = Path(out)
  sizes = _sizes(out, rerender_sizes)
  numeric = all(isinstance(s["value"], (int, float)) for s in sizes)
  transfer = {}
  for name in _optimizers(sizes):
    rates = [best_learning_rate(r) if (r := _record(s, name)) is not None else None for s in sizes]
    transfer[name] = {
      "best_learning_rates": rates,
      "slope": transfer_slope([s["value"] for s in sizes], rates) if numeric else None,
    }
  return {"sizes": sizes, "transfer": transfer}


def _cell(record: Mapping[str, Any] | None, key: str) -> str:
  """A record's mean ± std over seeds, as results.md shows it (``—``: no record at this size)."""
  if record is None:
    return "—"
  if key in ("data_speedup", "time_speedup"):
    return report.speedup_cell(record, key, multi=True)
  return report.cell(record, key, 3, multi=True)


def _lr_cell(record: Mapping[str, Any] | None) -> str:
  if record is None:
    return "—"
  text = f"{record['learning_rate']:g}"
  best = best_learning_rate(record)
  if best is not None and len(record.get("grid", [])) > 2:
    text += f" (≈{best:.3g})"
  if record.get("tuning", {}).get("at_edge"):
    text += " at edge"
  return text


def _table(sizes: Sequence[Mapping[str, Any]], names: Sequence[str], field: str, cell: Any) -> list[str]:
  lines = [f"| {field} | params | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
  for s in sizes:
    lines.append(f"| {s['value']} | {s['params']:,} | " + " | ".join(cell(_record(s, n)) for n in names) + " |")
  return lines


def markdown(collected: Mapping[str, Any], *, config: Mapping[str, Any], meta: Mapping[str, Any]) -> str:
  """The trends as Markdown: sizes, final losses, speedups, best learning rates and their transfer."""
  sizes, transfer = collected["sizes"], collected["transfer"]
  field = config["sizes"]["key"].removeprefix("model.")
  names = _optimizers(sizes)
  m = meta["machine"]
  per = config["sizes"].get("tokens_per_param")
  lines = [
    f"# {config['name']}: {config['task']} at {len(sizes)} sizes of {config['sizes']['key']}",
    "",
    f"{m['date']}, {m['device']} ({m['cpus']} CPUs, {m['processor']}), jax {m['jax']}. "
    + (f"{per:g} {meta['unit']} per parameter at every size." if per else f"{config['steps']} steps at every size."),
    "",
    f"| {field} | params | steps | {meta['unit']} | {meta['unit']}/param | done |",
    "|---|---|---|---|---|---|",
  ]
  for s in sizes:
    lines.append(
      f"| {s['value']} | {s['params']:,} | {s['steps']} | {s['units']:,} | {s['units'] / s['params']:.3g} "
      f"| {len(s['records'])}/{len(config['optimizers'])} |"
    )
  seeds = config.get("seeds") or [config.get("seed", 0)]
  lines += [
    "",
    f"## Final validation loss ({meta['loss_unit']}; mean ± std over {len(seeds)} seeds)",
    "",
    *_table(sizes, names, field, lambda r: _cell(r, "final_val_loss")),
  ]
  baseline = _baseline(sizes)
  if any(r.get("data_speedup") is not None for s in sizes for r in s["records"]):
    others = [n for n in names if n != baseline]
    horizons = ", ".join(f"{f}×" for f in config.get("speedup_horizons", [1]))
    lines += [
      "",
      f"## Speedup over {baseline} (equivalent data; Wen et al. 2025)",
      "",
      (
        f"How many times more steps {baseline} needs to reach each optimizer's final loss (interpolated in "
        f"log steps between {baseline}'s runs at {horizons} each size's steps; `>`/`<`: bounds outside "
        "them), mean ± std over seeds; then the same in training seconds."
      ),
      "",
      *_table(sizes, others, field, lambda r: _cell(r, "data_speedup")),
      "",
      "Equivalent training time:",
      "",
      *_table(sizes, others, field, lambda r: _cell(r, "time_speedup")),
    ]
  if any(len(r.get("grid", [])) > 1 for s in sizes for r in s["records"]):
    lines += [
      "",
      "## Best learning rate",
      "",
      (
        "The grid's best (≈ the minimum of a parabola in log learning rate through it and its neighbours); "
        "slope: least-squares slope of log₂ best rate against log₂ size (0: transfers across sizes; "
        "−1: halves at each doubling)."
      ),
      "",
      *_table(sizes, names, field, _lr_cell),
      "",
      "| optimizer | slope |",
      "|---|---|",
    ]
    for name in names:
      slope = transfer[name]["slope"]
      lines.append(f"| {name} | {'—' if slope is None else f'{slope:+.2f}'} |")
  return "\n".join(lines) + "\n"


def _errorbar(ax: Any, xs: Sequence[float], means: Sequence[float], stds: Sequence[float], **kwargs: Any) -> None:
  keep = [i for i, m in enumerate(means) if m is not None and math.isfinite(m)]
  if keep:
    ax.errorbar(
      [xs[i] for i in keep],
      [means[i] for i in keep],
      yerr=[stds[i] or 0.0 for i in keep],
      capsize=3,
      ms=4,
      lw=1.2,
      **kwargs,
    )


def _bound(record: Mapping[str, Any] | None, key: str) -> tuple[float, str] | None:
  """``(bound, marker)`` when every seed's speedup lies beyond the measured horizons on one side."""
  entry = (record or {}).get("summaries", {}).get(key)
  if entry is None or entry["summary"]["n"]:
    return None
  total = entry["above"] + entry["below"] + entry["summary"]["missing"]
  if entry["above"] == total:
    return entry["above_at"], "^"
  if entry["below"] == total:
    return entry["below_at"], "v"
  return None


def figures(collected: Mapping[str, Any], *, title: str, loss_unit: str, baseline: str | None) -> dict[str, Any]:
  """matplotlib Figures keyed ``loss``, ``speedup`` (when measured) and ``lr`` (when grids were tuned)."""
  import matplotlib
  import matplotlib.ticker

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  sizes = collected["sizes"]
  names = _optimizers(sizes)
  params = [s["params"] for s in sizes]
  figs = {}
  fig, ax = plt.subplots(figsize=(6, 4.4), dpi=100)
  for name in names:
    records = [_record(s, name) for s in sizes]
    _errorbar(
      ax,
      params,
      [r and r["final_val_loss"] for r in records],
      [r and r.get("final_val_loss_std") for r in records],
      fmt="o-",
      color=report.colour(name),
      label=name,
    )
  ax.set(xscale="log", xlabel="parameters", ylabel=f"final validation loss ({loss_unit})")
  ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # labelled minor ticks overlap
  ax.set_title(f"{title}: loss vs parameters (mean ± std over seeds)", fontsize=10)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)
  fig.tight_layout()
  figs["loss"] = fig

  if any(r.get("data_speedup") is not None for s in sizes for r in s["records"]):
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4), dpi=100)
    for ax, key, what in ((axes[0], "data_speedup", "equivalent data"), (axes[1], "time_speedup", "equivalent time")):
      for name in (n for n in names if n != baseline):
        records = [_record(s, name) for s in sizes]
        _errorbar(
          ax,
          params,
          [r and r.get(key) for r in records],
          [r and r.get(f"{key}_std") for r in records],
          fmt="o-",
          color=report.colour(name),
          label=name,
        )
        for x, record in zip(params, records):  # every seed beyond the measured horizons: the bound, hollow
          bound = _bound(record, key)
          if bound is not None:
            ax.plot([x], [bound[0]], bound[1], ms=7, mfc="none", color=report.colour(name))
      ax.axhline(1.0, color=report.colour(baseline or ""), lw=1, ls="--", label=f"{baseline} (1×)")
      ax.set(xscale="log", xlabel="parameters", ylabel=f"speedup over {baseline}")
      ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
      ax.set_title(f"{what} speedup", fontsize=10)
      ax.grid(alpha=0.3)
      ax.legend(fontsize=7)
    fig.suptitle(
      f"{title}: speedup over {baseline} vs parameters (mean ± std over seeds; hollow triangles: "
      "every seed beyond the measured horizons, a bound)",
      fontsize=10,
    )
    fig.tight_layout()
    figs["speedup"] = fig

  tuned = [n for n in names if any(len((_record(s, n) or {}).get("grid", [])) > 1 for s in sizes)]
  if tuned:
    cols = min(4, len(tuned))
    rows = math.ceil(len(tuned) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.3 * rows), dpi=100, squeeze=False)
    cmap = plt.get_cmap("viridis")
    for ax, name in zip(axes.flat, tuned):
      lows = []
      for i, s in enumerate(sizes):
        record = _record(s, name)
        if record is None:
          continue
        lrs, loss, std = _grid_line(record)
        colour = cmap(i / max(1, len(sizes) - 1))
        ax.errorbar(
          lrs, loss, yerr=std, fmt="o-", ms=3, lw=1.2, capsize=2, color=colour, label=f"{s['value']} ({s['params']:,})"
        )
        if np.isfinite(loss).any():
          lows.append(float(np.nanmin(loss)))
          best = best_learning_rate(record)
          if best is not None:
            ax.axvline(best, color=colour, lw=0.8, ls=":")
      if lows:  # diverged and far-off points would flatten the curves' bottoms
        ax.set_ylim(min(lows) - 0.05, min(lows) + 0.8)
      ax.set(xscale="log", xlabel="learning rate", ylabel=f"final val loss ({loss_unit})")
      ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # labelled minor ticks overlap
      ax.set_title(name, fontsize=10)
      ax.grid(alpha=0.3)
      ax.legend(fontsize=6, title=sizes[0]["key"].removeprefix("model."), title_fontsize=6)
    for ax in list(axes.flat)[len(tuned) :]:
      ax.axis("off")
    fig.suptitle(f"{title}: learning-rate curves by size (mean ± std over seeds; dotted: interpolated best)")
    fig.tight_layout()
    figs["lr"] = fig
  return figs


def render(out: str | Path, *, rerender_sizes: bool = True) -> list[dict[str, Any]]:
  """Re-render every size of ``out`` (unless ``rerender_sizes`` is False, :func:`collect`),
  then write ``trends.json``, ``results.md`` and the plots.

  Returns:
    The sizes as ``trends.json`` holds them.
  """
  import matplotlib.pyplot as plt

  out = Path(out)
  config, meta = collect_lib.read_json(out / "config.json"), collect_lib.read_json(out / "meta.json")
  collected = collect(out, rerender_sizes=rerender_sizes)
  collect_lib.write_json(out / "trends.json", collected)
  (out / "results.md").write_text(markdown(collected, config=config, meta=meta))
  figs = figures(collected, title=config["name"], loss_unit=meta["loss_unit"], baseline=_baseline(collected["sizes"]))
  for key, filename in (
    ("loss", "loss_vs_params.png"),
    ("speedup", "speedup_vs_params.png"),
    ("lr", "lr_transfer.png"),
  ):
    path = out / filename
    if key in figs:
      figs[key].savefig(path)
      plt.close(figs[key])
    elif path.exists():
      path.unlink()
  return collect_lib.read_json(out / "trends.json")["sizes"]
