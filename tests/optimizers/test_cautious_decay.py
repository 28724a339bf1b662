"""``cautious_weight_decay`` in every optimizer that takes it: the decay
lands exactly where the optimizer's own step and the weight agree in sign."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import matopt


def _tree(seed):
  rng = np.random.default_rng(seed)
  return {
    "w": jnp.asarray(rng.standard_normal((6, 5)), jnp.float32),
    "b": jnp.asarray(rng.standard_normal(5), jnp.float32),
  }


LR = 0.01
CAUTIOUS = {
  "muon": lambda **kw: matopt.muon(LR, adam_learning_rate=LR, **kw),
  "shampoo": lambda **kw: matopt.shampoo(LR, precondition_every=1, **kw),
  "soap": lambda **kw: matopt.soap(LR, precondition_every=1, **kw),
  "signum": lambda **kw: matopt.signum(LR, **kw),
  "nsgd": lambda **kw: matopt.nsgd(LR, **kw),
  "clipped_sgd": lambda **kw: matopt.clipped_sgd(LR, **kw),
}


@pytest.mark.parametrize("name", list(CAUTIOUS))
def test_optimizers_decay_only_where_update_and_weight_agree(name):
  # Two steps so SOAP (whose first step is zero) decays against a real update.
  params = {"Dense_0": {"kernel": _tree(6)["w"], "bias": _tree(6)["b"]}, "Dense_1": {"kernel": _tree(7)["w"].T}}
  grads = [jax.tree.map(lambda p, s=s: jax.random.normal(jax.random.key(s), p.shape), params) for s in (1, 2)]

  def second_update(**kw):
    tx = CAUTIOUS[name](**kw)
    state = tx.init(params)
    for g in grads:
      update, state = tx.update(g, state, params)
    return update

  lam = 0.5
  plain = second_update(weight_decay=0.0)
  cautious = second_update(weight_decay=lam, cautious_weight_decay=True)
  full = second_update(weight_decay=lam)
  flags = []
  for p, u0, uc, uf in zip(*(jax.tree.leaves(t) for t in (params, plain, cautious, full))):
    direction = -np.asarray(u0) / LR  # the update before the learning rate
    agree = direction * np.asarray(p) >= 0
    decayed = np.ndim(p) > 1  # weight_decay reaches matrices, not the bias (its default mask)
    flags.append(agree)
    np.testing.assert_allclose(uc, np.asarray(u0) - LR * lam * decayed * agree * np.asarray(p), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(uf, np.asarray(u0) - LR * lam * decayed * np.asarray(p), rtol=1e-5, atol=1e-7)
  flags = np.concatenate([f.ravel() for f in flags])
  assert 0 < flags.sum() < flags.size
