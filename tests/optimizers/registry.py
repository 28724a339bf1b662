"""Per-optimizer needs for the contract suite (never `if name in [...]`)."""

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import optax

import matopt


class Entry(NamedTuple):
  factory: Callable[..., optax.GradientTransformation]
  learning_rate: float
  # Update that zero gradients produce (constrained Scion still decays W).
  zero_grad_update: Callable = lambda params, lr: jax.tree.map(lambda p: 0.0 * p, params)
  # Leading updates that are zero by design (SOAP's first step only builds its eigenbases).
  silent_steps: int = 0


def _muon_clip(learning_rate):
  """MuonClip whose ``update`` defaults ``max_logits={}``: these trees hold no
  attention module, so QK-clip has nothing to clip and the suites call
  ``update(grads, state, params)`` like every other optimizer (clipping
  itself: tests/optimizers/test_qk_clip_chain.py)."""
  tx = matopt.muon_clip(learning_rate)
  return optax.GradientTransformationExtraArgs(tx.init, functools.partial(tx.update, max_logits={}))


# Radii for a net this small (the nanoGPT defaults of 50 / 3000 are for width 768).
_RADII = {"embedding": 1.0, "hidden": 1.0, "head": 64.0, "vector": 1.0}

REGISTRY = {
  "muon": Entry(matopt.muon, 0.05),
  "normuon": Entry(matopt.normuon, 0.05),
  "adamuon": Entry(
    lambda learning_rate, adam_learning_rate=0.02: matopt.adamuon(learning_rate, adam_learning_rate=adam_learning_rate),
    0.02,
  ),
  # Cautious decay still decays where the update is 0 (u ⊙ W ≥ 0), so zero
  # gradients shrink every weight matrix by η λ (the default decay mask
  # leaves biases alone).
  "muon_cautious": Entry(
    lambda learning_rate, adam_learning_rate=0.05: matopt.muon(
      learning_rate, weight_decay=0.1, cautious_weight_decay=True, adam_learning_rate=adam_learning_rate
    ),
    0.05,
    zero_grad_update=lambda params, lr: jax.tree.map(lambda p: -lr * 0.1 * (p.ndim > 1) * p, params),
  ),
  "muon_clip": Entry(_muon_clip, 0.02),
  "muon_rms": Entry(
    lambda learning_rate: matopt.muon(learning_rate, scale="rms", adam_learning_rate=learning_rate), 0.02
  ),
  "scion": Entry(
    lambda learning_rate: matopt.scion(learning_rate, radii=_RADII, momentum=0.5),
    0.1,
    zero_grad_update=lambda params, lr: jax.tree.map(lambda p: -lr * p, params),
  ),
  "unconstrained_scion": Entry(
    lambda learning_rate: matopt.unconstrained_scion(learning_rate, radii=_RADII, momentum=0.5), 0.05
  ),
  "shampoo": Entry(lambda learning_rate: matopt.shampoo(learning_rate, precondition_every=2), 0.01),
  "signum": Entry(matopt.signum, 0.01),
  "soap": Entry(
    lambda learning_rate: matopt.soap(learning_rate, precondition_every=2, weight_decay=0.0), 0.01, silent_steps=1
  ),
  "nsgd": Entry(matopt.nsgd, 0.3),
  "clipped_sgd": Entry(matopt.clipped_sgd, 0.5),
}
