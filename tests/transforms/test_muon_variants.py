"""NorMuon and AdaMuon transforms against numpy transcriptions of the
reference code (zichongli5/NorMuon ``normuon_update``; Chongjie-Si/AdaMuon
``adamuon.py``), in Flax layout (PyTorch's rows are our columns)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import matopt


def _normuon_reference(os_, b2=0.95, eps=1e-10):
  v = np.zeros((1, os_[0].shape[1]))
  out = []
  for o in os_:
    norm = np.linalg.norm(o)
    v = b2 * v + (1 - b2) * np.mean(o * o, axis=0, keepdims=True)  # per output neuron
    u = o / (np.sqrt(v) + eps)
    out.append(u * norm / (np.linalg.norm(u) + eps))
  return out


def _adamuon_reference(os_, b2=0.999, eps=1e-8, bias_correction=True):
  v = np.zeros_like(os_[0])
  out = []
  for t, o in enumerate(os_, start=1):
    v = b2 * v + (1 - b2) * o * o
    u = o / (np.sqrt(v / ((1 - b2**t) if bias_correction else 1.0)) + eps)
    out.append(u * np.sqrt(min(o.shape)) / (np.linalg.norm(u) + eps))
  return out


def _inputs(shape, steps=4, seed=0):
  # Unequal column (output-neuron) and row sizes, so a normalisation along
  # the wrong axis cannot pass (after an exact msign, a tall matrix's columns
  # are all unit vectors).
  rng = np.random.default_rng(seed)
  return [
    rng.standard_normal(shape) * rng.uniform(0.1, 3, shape[1]) * rng.uniform(0.5, 2, (shape[0], 1))
    for _ in range(steps)
  ]


@pytest.mark.parametrize(
  ("make", "reference"),
  [
    (lambda: matopt.scale_by_normuon(), _normuon_reference),
    (lambda: matopt.scale_by_normuon(b2=0.5, eps=1e-6), lambda x: _normuon_reference(x, 0.5, 1e-6)),
    (lambda: matopt.scale_by_adamuon(), _adamuon_reference),
    (lambda: matopt.scale_by_adamuon(b2=0.9), lambda x: _adamuon_reference(x, 0.9)),
    # The current reference code's step: no bias correction (and b2 = momentum).
    (
      lambda: matopt.scale_by_adamuon(b2=0.95, eps=1e-3, bias_correction=False),
      lambda x: _adamuon_reference(x, 0.95, 1e-3, bias_correction=False),
    ),
  ],
  ids=["normuon", "normuon_b2", "adamuon", "adamuon_b2", "adamuon_no_bias_correction"],
)
@pytest.mark.parametrize("shape", [(12, 5), (5, 12), (8, 8)])
def test_matches_reference_over_steps(make, reference, shape):
  os_ = _inputs(shape)
  tx = make()
  state = tx.init({"w": jnp.zeros(shape)})
  for o, want in zip(os_, reference(os_)):
    got, state = tx.update({"w": jnp.asarray(o, jnp.float32)}, state)
    np.testing.assert_allclose(got["w"], want, rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("make", [matopt.scale_by_normuon, matopt.scale_by_adamuon])
def test_zero_and_extreme_updates_stay_finite(make):
  tx = make()
  shape = (6, 4)
  state = tx.init({"w": jnp.zeros(shape)})
  got, state = tx.update({"w": jnp.zeros(shape)}, state)
  np.testing.assert_array_equal(got["w"], 0.0)
  for scale in (1e-30, 1.0, 1e15):
    o = scale * jnp.asarray(_inputs(shape, steps=1)[0], jnp.float32)
    got, state = tx.update({"w": o}, state)
    assert np.all(np.isfinite(got["w"]))
  got, _ = tx.update({"w": jnp.ones(shape, jnp.bfloat16)}, state)
  assert got["w"].dtype == jnp.bfloat16 and np.all(np.isfinite(np.asarray(got["w"], np.float32)))


@pytest.mark.parametrize("make", [matopt.scale_by_normuon, matopt.scale_by_adamuon])
def test_split_view_is_per_block(make):
  # A fused (d, 3d) leaf split in three equals three separate leaves.
  os_ = _inputs((6, 18), steps=3, seed=3)
  fused_tx = make(dimension_numbers=matopt.DimensionNumbers(0, 1, output_split=3))
  parts_tx = make()
  fs = fused_tx.init({"w": jnp.zeros((6, 18))})
  ps = parts_tx.init({k: jnp.zeros((6, 6)) for k in "qkv"})
  for o in os_:
    o = jnp.asarray(o, jnp.float32)
    got, fs = fused_tx.update({"w": o}, fs)
    want, ps = parts_tx.update({k: o[:, 6 * i : 6 * (i + 1)] for i, k in enumerate("qkv")}, ps)
    np.testing.assert_allclose(got["w"], jnp.concatenate([want[k] for k in "qkv"], axis=1), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("make", [matopt.scale_by_normuon, matopt.scale_by_adamuon])
def test_vector_leaf_and_bad_options_raise(make):
  with pytest.raises(ValueError, match="acts on matrices, but leaf 'layer/bias'"):
    make().init({"layer": {"bias": jnp.zeros(3), "kernel": jnp.zeros((3, 3))}})
  with pytest.raises(ValueError, match="b2"):
    make(b2=1.0)
  with pytest.raises(ValueError, match="eps"):
    make(eps=-1.0)
  if make is matopt.scale_by_adamuon:
    with pytest.raises(ValueError, match="bias_correction"):
      make(bias_correction=1)


def test_state_is_jit_stable():
  for tx in (matopt.scale_by_normuon(), matopt.scale_by_adamuon()):
    params = {"w": jnp.zeros((5, 7))}
    state = tx.init(params)
    _, new = jax.jit(tx.update)({"w": jnp.ones((5, 7))}, state)
    assert jax.tree.map(lambda a: (a.shape, a.dtype), new) == jax.tree.map(lambda a: (a.shape, a.dtype), state)
