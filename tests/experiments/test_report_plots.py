"""The loss plots and the results table, read from the matplotlib Figures and the text."""

import itertools

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.colors import to_rgb

from matopt.experiments import collect, report
from matopt.experiments import optimizers as optimizers_lib

matplotlib.use("Agg")


def _lab(colour) -> np.ndarray:
  """CIELAB (D65) of a matplotlib colour: Euclidean distance there (ΔE76) is perceptual."""
  rgb = np.asarray(to_rgb(colour))
  linear = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
  xyz = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]]) @ linear
  t = xyz / np.array([0.95047, 1.0, 1.08883])  # relative to the D65 white point
  f = np.where(t > (6 / 29) ** 3, np.cbrt(t), t / (3 * (6 / 29) ** 2) + 4 / 29)
  return np.array([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])


def _delta_e(a, b) -> float:
  return float(np.linalg.norm(_lab(a) - _lab(b)))


def _history(seed: int, steps: int = 40, eval_every: int = 10) -> dict:
  rng = np.random.default_rng(seed)
  loss = 5.0 * np.exp(-np.arange(1, steps + 1) / rng.uniform(10, 30)) + 1.5 + 0.1 * rng.random(steps)
  seconds = np.cumsum(rng.uniform(0.01, 0.02, steps))
  train = [[s + 1, float(seconds[s]), float(loss[s])] for s in range(steps)]
  val = [[s, float(seconds[s - 1]), float(loss[s - 1] + 0.3), 0.0] for s in range(eval_every, steps + 1, eval_every)]
  return {"train": train, "val": val}


CURVES = [
  collect.Curve("adamw", "adamw", 0.01, {}, _history(0)),
  collect.Curve("muon", "muon", 0.03, {"adam_learning_rate": 0.01}, _history(1)),
  collect.Curve("unconstrained_scion", "unconstrained_scion", 4e-4, {}, _history(2)),
]


def _lines(ax) -> dict[str, str]:
  """Legend label → line colour (hex) of one panel."""
  return {
    line.get_label(): matplotlib.colors.to_hex(line.get_color())
    for line in ax.get_lines()
    if not line.get_label().startswith("_")
  }


@pytest.fixture(autouse=True)
def _close_figures():
  yield
  plt.close("all")


@pytest.fixture
def figures():
  return report.figures(CURVES, title="tiny: gpt", loss_unit="nats/byte")


def test_both_panels_have_a_unit_and_a_legend_with_the_learning_rates(figures):
  assert set(figures) == {"step", "time"}
  want = ["adamw (lr 0.01)", "muon (lr 0.03, adam lr 0.01)", "unconstrained_scion (lr 0.0004)"]
  for axis, fig in figures.items():
    left, right = fig.axes
    assert left.get_xlabel() == right.get_xlabel() == ("step" if axis == "step" else "training seconds")
    for ax in (left, right):
      assert "nats/byte" in ax.get_ylabel(), ax.get_ylabel()
      legend = ax.get_legend()
      assert legend is not None, ax.get_title()
      assert [t.get_text() for t in legend.get_texts()] == want
    # One colour per optimizer, the same on both panels and both figures.
    assert _lines(left) == _lines(right)
    assert len(set(_lines(left).values())) == len(CURVES)
    assert _lines(left) == _lines(figures["step"].axes[0])


def test_colours_are_fixed_per_optimizer_name(figures):
  colours = {label.split(" ")[0]: c for label, c in _lines(figures["step"].axes[0]).items()}
  # The same name keeps its colour whatever else is plotted, in whatever order.
  alone = report.figures(CURVES[1:2], title="t", loss_unit="nats/byte")
  swapped = report.figures(CURVES[::-1], title="t", loss_unit="nats/byte")
  assert {k.split(" ")[0]: c for k, c in _lines(alone["step"].axes[0]).items()} == {"muon": colours["muon"]}
  assert {k.split(" ")[0]: c for k, c in _lines(swapped["step"].axes[1]).items()} == colours
  for name, colour in colours.items():
    assert colour == matplotlib.colors.to_hex(report.colour(name))


def test_muon_and_unconstrained_scion_are_far_apart_and_every_optimizer_has_its_own_colour():
  # Their curves overlap in the quickstart; 801e7c2 drew them orange and red (ΔE ≈ 40).
  assert _delta_e(report.colour("muon"), report.colour("unconstrained_scion")) > 80
  names = sorted(optimizers_lib.CATALOGUE)
  assert set(names) <= set(report.COLOURS)
  for a, b in itertools.combinations(names, 2):
    assert _delta_e(report.COLOURS[a], report.COLOURS[b]) > 25, (a, b)


def test_runs_named_freely_get_distinct_stable_colours():
  rng = np.random.default_rng(7)
  curves = [
    collect.Curve(name, "muon", float(rng.uniform(1e-3, 1e-1)), {}, _history(i))
    for i, name in enumerate(["muon", "muon_wd", "muon_nesterov", "my run"])
  ]
  figs = report.figures(curves, title="t", loss_unit="nats/example")
  colours = list(_lines(figs["step"].axes[0]).values())
  assert len(set(colours)) == len(curves)
  again = report.figures(curves, title="t", loss_unit="nats/example")
  assert list(_lines(again["time"].axes[1]).values()) == colours
  assert "nats/example" in figs["step"].axes[1].get_ylabel()


def test_plots_writes_pngs(tmp_path):
  paths = report.plots(CURVES, tmp_path, title="tiny: gpt", loss_unit="nats/byte")
  assert [p.name for p in paths] == ["loss_vs_step.png", "loss_vs_time.png"]
  for p in paths:
    assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_results_table_labels_the_train_loss_mean_and_the_unit():
  rng = np.random.default_rng(3)
  records = [
    {
      "optimizer": name,
      "learning_rate": lr,
      "final_train_loss": float(rng.uniform(1, 3)),
      "final_val_loss": float(rng.uniform(1, 3)),
      "steps": 10,
      "wall_seconds": 1.5,
      "throughput": 1e4,
      "diverged": False,
      "grid": [{"learning_rate": lr}],
    }
    for name, lr in (("adamw", 0.01), ("muon", 0.03))
  ]
  info = {"date": "2026-12-01", "device": "cpu", "processor": "x86_64", "cpus": "2", "jax": "0", "python": "3"}
  table = report.markdown(records, config_name="tiny", task="gpt", unit="tokens", loss_unit="nats/byte", info=info)
  header = next(line for line in table.splitlines() if line.startswith("| optimizer"))
  assert "| train loss (mean of last 10 steps) |" in header and "| final val loss |" in header
  assert "Losses are in nats/byte" in table
