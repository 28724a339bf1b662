"""QK-clip last in a chain after Muon: max_logits reaches it through optax.chain."""

import jax
import numpy as np
import optax

import matopt
from tests.transforms.test_qk_clip import GAMMA, TAU, S, _attn, _normal


def test_chain_with_muon_clips_the_stepped_weights():
  # Last in a chain, max_logits reaches it through optax.chain.
  tx = optax.chain(matopt.muon(0.02, labels=lambda p: jax.tree.map(lambda _: "hidden", p)), matopt.qk_clip(TAU))
  params = {"attn": _attn(3)}
  grads = jax.tree.map(lambda w: _normal(w.shape, 5), params)
  u, _ = jax.jit(tx.update)(grads, tx.init(params), params, max_logits={"attn": S})
  inner = matopt.muon(0.02, labels=lambda p: jax.tree.map(lambda _: "hidden", p))
  u0, _ = inner.update(grads, inner.init(params), params)
  new = optax.apply_updates(params, u)["attn"]["key"]["kernel"]
  want = np.asarray(optax.apply_updates(params, u0)["attn"]["key"]["kernel"]) * np.sqrt(GAMMA)[:, None]
  np.testing.assert_allclose(new, want, rtol=1e-5, atol=1e-7)
