"""examples/ run as tests: MuonClip on an nnx attention block keeps the
largest attention logit near τ, while plain Muon lets it grow."""

import importlib.util
import pathlib

import numpy as np

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"


def _load(name):
  spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_qk_clip_nnx_bounds_the_logits():
  example = _load("qk_clip_nnx")
  tau = 1.0
  clipped = example.train(100, tau, clip=True)
  plain = example.train(100, tau, clip=False)
  assert np.all(np.isfinite(clipped)) and np.all(np.isfinite(plain))
  assert max(plain) > 1.5 * tau  # without the clip the logits grow past τ
  assert max(clipped) < 1.25 * tau  # with it they stay near τ (clipped one step late)
  assert max(clipped[:10]) < tau  # and the run starts below τ, so the clip acted
