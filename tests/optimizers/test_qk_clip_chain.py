"""QK-clip last in a chain after Muon: max_logits reaches it through optax.chain."""

import jax
import numpy as np
import optax
import pytest

import matopt
from tests.transforms.test_qk_clip import GAMMA, TAU, S, _attn, _normal


def test_chain_with_muon_clips_the_stepped_weights():
  # Last in a chain, max_logits reaches it through optax.chain.
  # by_role: the (d, heads, d_head) kernels are hidden matrices, the
  # (heads, d_head) biases vectors.
  tx = optax.chain(matopt.muon(0.02), matopt.qk_clip(TAU))
  params = {"attn": _attn(3)}
  grads = jax.tree.map(lambda w: _normal(w.shape, 5), params)
  u, _ = jax.jit(tx.update)(grads, tx.init(params), params, max_logits={"attn": S})
  inner = matopt.muon(0.02)
  u0, _ = inner.update(grads, inner.init(params), params)
  new = optax.apply_updates(params, u)["attn"]["key"]["kernel"]
  want = np.asarray(optax.apply_updates(params, u0)["attn"]["key"]["kernel"]) * np.sqrt(GAMMA)[:, None]
  np.testing.assert_allclose(new, want, rtol=1e-5, atol=1e-7)


def test_muon_clip_is_rms_muon_then_qk_clip():
  params = {"blocks": {"attn": _attn(4)}, "head": {"kernel": _normal((8, 5), 6)}}
  grads = jax.tree.map(lambda w: _normal(w.shape, 7), params)
  tx = matopt.muon_clip(0.02, tau=TAU, weight_decay=0.1, adam_learning_rate=3e-3)
  state = tx.init(params)
  u, state = jax.jit(tx.update)(grads, state, params, max_logits={"blocks": {"attn": S}})
  plain = matopt.muon(0.02, scale="rms", weight_decay=0.1, adam_learning_rate=3e-3)
  u0, _ = plain.update(grads, plain.init(params), params)
  stepped, want = optax.apply_updates(params, u), optax.apply_updates(params, u0)
  for name in ("query", "key"):
    for leaf in ("kernel", "bias"):
      factor = np.sqrt(GAMMA)[:, None]  # kernels (d, heads, d_head) and biases (heads, d_head)
      np.testing.assert_allclose(
        stepped["blocks"]["attn"][name][leaf],
        np.asarray(want["blocks"]["attn"][name][leaf]) * factor,
        rtol=1e-5,
        atol=1e-6,
      )
  for a, b in zip(
    jax.tree.leaves((stepped["blocks"]["attn"]["value"], stepped["head"])),
    jax.tree.leaves((want["blocks"]["attn"]["value"], want["head"])),
  ):
    np.testing.assert_allclose(a, b, rtol=1e-6)  # jit vs eager round-off only
  # The second step too (state carried), and forgetting the logits is an error, not a silent no-op.
  jax.jit(tx.update)(grads, state, params, max_logits={"blocks": {"attn": S}})
  with pytest.raises(ValueError, match="needs the model's attention logits"):
    tx.update(grads, state, params)
