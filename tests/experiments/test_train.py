"""train(): options that cannot work are refused before anything is built."""

import optax
import pytest

from matopt.experiments import train


def test_checkpoints_need_a_directory():
  # Raised before the task is touched: no model is built, no data read.
  with pytest.raises(ValueError, match=r"train\(checkpoint_every=5\) needs run_dir=.*or checkpoint_every=0"):
    train.train(None, optax.sgd(0.1), steps=10, checkpoint_every=5, seed=0)
