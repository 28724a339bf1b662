"""train(): options that cannot work are refused before anything is built."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import matopt
from matopt.experiments import train


def test_checkpoints_need_a_directory():
  # Raised before the task is touched: no model is built, no data read.
  with pytest.raises(ValueError, match=r"train\(checkpoint_every=5\) needs run_dir=.*or checkpoint_every=0"):
    train.train(None, optax.sgd(0.1), steps=10, checkpoint_every=5, seed=0)


def _gpt_task():
  from matopt.experiments import config as config_lib
  from matopt.experiments import optimizers, tasks

  raw = {
    "task": "gpt",
    "steps": 4,
    "batch_size": 2,
    "eval_batches": 1,
    "model": {"layers": 2, "width": 16, "heads": 2, "seq_len": 8},
    "data": {"max_bytes": 20_000, "val_percent": 10},
    "optimizers": [{"name": "muon_clip", "learning_rate": 0.02}],
  }
  return tasks.TASKS["gpt"](config_lib.parse(raw, catalogue=optimizers.CATALOGUE, tasks=tasks.TASKS))


def _losses(task, tx, **kwargs):
  result = train.train(task, tx, steps=4, seed=0, **kwargs)
  return [h[2] for h in result["history"]["train"]]


def test_muon_clip_gets_the_models_logits():
  task = _gpt_task()
  heads = {k: v for k, v in task.model_options().items() if k in ("query", "key", "head_dim")}
  assert heads == {"query": "qkv", "key": "qkv", "head_dim": 8}
  seen = []
  clip = matopt.muon_clip(0.02, tau=0.3, adam_learning_rate=0.003, **heads)

  def update(updates, state, params=None, *, max_logits=None):
    seen.append(jax.tree.map(lambda x: x.shape, max_logits))
    return clip.update(updates, state, params, max_logits=max_logits)

  spy = optax.GradientTransformationExtraArgs(clip.init, update)
  clipped = _losses(task, spy, update_args=("max_logits",))
  # One (heads,) maximum per layer, at each attention module's path.
  assert seen[0] == {"blocks": {0: {"attn": {"max_logits": ((2,),)}}, 1: {"attn": {"max_logits": ((2,),)}}}}
  # A τ no logit reaches leaves RMS-matched Muon as it is; a small τ changes training.
  plain = _losses(task, matopt.muon(0.02, scale="rms", adam_learning_rate=0.003))
  never = _losses(task, matopt.muon_clip(0.02, tau=1e9, adam_learning_rate=0.003, **heads), update_args=("max_logits",))
  np.testing.assert_allclose(never, plain, rtol=1e-6)
  assert not np.allclose(clipped[1:], plain[1:], rtol=1e-4)


def test_clipping_holds_the_reported_logits_near_tau():
  # The logits each step reports are measured before that step's clip, on a
  # new batch: with τ = 0.3 they stay near τ after the first step, while
  # without clipping (τ never reached) this GPT's logits sit at 1.7–3.4.
  task = _gpt_task()
  peaks = {}
  for tau in (0.3, 1e9):
    tx = matopt.muon_clip(0.02, tau=tau, adam_learning_rate=0.003, query="qkv", key="qkv", head_dim=8)
    result = train.train(task, tx, steps=6, seed=0, update_args=("max_logits",))
    peaks[tau] = [h[1] for h in result["history"]["max_logit"]]
    assert [h[0] for h in result["history"]["max_logit"]] == list(range(1, 7))
    np.testing.assert_allclose(result["final_max_logit"], np.mean(peaks[tau]))
  assert peaks[0.3][0] == peaks[1e9][0] > 1.0  # the same first step, before any clip
  assert max(peaks[0.3][1:]) < 2 * 0.3 < 1.0 < min(peaks[1e9][1:])


def test_named_keeps_only_the_paths_to_one_sown_name():
  sown = {"blocks": {0: {"attn": {"max_logits": (1,), "other": (2,)}, "mlp": {"other": (3,)}}}, "head": {}}
  assert train._named(sown, "max_logits") == {"blocks": {0: {"attn": {"max_logits": (1,)}}}}
  assert train._named(sown, "other") == {"blocks": {0: {"attn": {"other": (2,)}, "mlp": {"other": (3,)}}}}
  assert train._named(sown, "absent") == {}


def test_checkpoints_keep_the_state_tree_and_skip_only_zero_size_leaves(tmp_path):
  # orbax refuses zero-size arrays; such a leaf holds nothing and comes back from `like`.
  state = {
    "params": {"w": jnp.arange(6.0).reshape(2, 3)},
    "opt_state": (
      optax.ScaleByAdamState(jnp.int32(3), {"w": jnp.ones((2, 3))}, {"w": jnp.zeros((0, 3))}),
      optax.EmptyState(),
    ),
  }
  ckpt = train.Checkpoints(tmp_path / "c")
  ckpt.save(3, state, {"seconds": 1.0})
  like = jax.tree.map(jnp.zeros_like, state)
  restored, meta = ckpt.restore(ckpt.latest(), like)
  ckpt.close()
  assert meta == {"seconds": 1.0} and jax.tree.structure(restored) == jax.tree.structure(state)
  for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(state)):
    np.testing.assert_array_equal(got, want)
  # On disk: the tree by its own keys, not a flat list of leaves.
  assert (tmp_path / "c" / "3" / "state").is_dir()
