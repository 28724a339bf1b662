"""train(): options that cannot work are refused before anything is built."""

import jax
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

  raw = {"task": "gpt", "steps": 4, "batch_size": 2, "eval_batches": 1,
         "model": {"layers": 2, "width": 16, "heads": 2, "seq_len": 8},
         "data": {"max_bytes": 20_000, "val_percent": 10},
         "optimizers": [{"name": "muon_clip", "learning_rate": 0.02}]}
  return tasks.TASKS["gpt"](config_lib.parse(raw, catalogue=optimizers.CATALOGUE, tasks=tasks.TASKS))


def _losses(task, tx, **kwargs):
  result = train.train(task, tx, steps=4, seed=0, **kwargs)
  return [h[2] for h in result["history"]["train"]]


def test_muon_clip_gets_the_models_logits():
  task = _gpt_task()
  heads = task.qk_clip_defaults
  seen = []
  clip = matopt.muon_clip(0.02, tau=0.3, adam_learning_rate=0.003, **heads)

  def update(updates, state, params=None, *, max_logits=None):
    seen.append(jax.tree.map(lambda x: x.shape, max_logits))
    return clip.update(updates, state, params, max_logits=max_logits)

  spy = optax.GradientTransformationExtraArgs(clip.init, update)
  clipped = _losses(task, spy, max_logits=True)
  # One (heads,) maximum per layer, at each attention module's path.
  assert seen[0] == {"blocks": {0: {"attn": {"max_logits": ((2,),)}}, 1: {"attn": {"max_logits": ((2,),)}}}}
  # A τ no logit reaches leaves RMS-matched Muon as it is; a small τ changes training.
  plain = _losses(task, matopt.muon(0.02, scale="rms", adam_learning_rate=0.003))
  never = _losses(task, matopt.muon_clip(0.02, tau=1e9, adam_learning_rate=0.003, **heads), max_logits=True)
  np.testing.assert_allclose(never, plain, rtol=1e-6)
  assert not np.allclose(clipped[1:], plain[1:], rtol=1e-4)
