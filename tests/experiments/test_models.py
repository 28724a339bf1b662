"""The models' module names give by_role the roles the recipes expect."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from matopt import _tree, labels
from matopt.experiments import models


def _roles(model):
  params = nnx.state(model, nnx.Param)
  return {
    _tree.path_str(path).removesuffix("/value"): role
    for path, role in jax.tree_util.tree_leaves_with_path(labels.by_role(params))
  }


def test_gpt_roles_and_shapes():
  model = models.GPT(vocab=256, width=16, layers=2, heads=2, seq_len=8, positions="learned", rngs=nnx.Rngs(0))
  roles = _roles(model)
  assert roles["embed/embedding"] == "embedding"
  assert roles["pos_embed"] == "embedding"
  assert roles["head/kernel"] == "head"
  assert roles["blocks/0/attn/qkv/kernel"] == "hidden"
  assert roles["blocks/1/proj/kernel"] == "hidden"
  assert roles["blocks/0/norm1/scale"] == "vector"
  logits = model(jnp.zeros((3, 8), jnp.int32))
  assert logits.shape == (3, 8, 256)
  np.testing.assert_array_equal(logits, 0.0)  # zero head: first loss is log(256)


def test_rope_is_a_rotation_that_depends_on_position():
  x = jax.random.normal(jax.random.key(0), (1, 5, 2, 8))
  y = models.rope(x)
  np.testing.assert_allclose(jnp.linalg.norm(y, axis=-1), jnp.linalg.norm(x, axis=-1), rtol=1e-5)
  np.testing.assert_allclose(y[:, 0], x[:, 0], rtol=1e-6)  # position 0 is not rotated
  # Relative: <rope(q)_i, rope(k)_j> depends on i − j only.
  q = jnp.broadcast_to(x[:, :1], x.shape)
  rq = models.rope(q)
  dots = jnp.einsum("bthd,bshd->bhts", rq, rq)[0, 0]
  np.testing.assert_allclose(dots[1, 3], dots[0, 2], rtol=1e-4)


def test_image_model_roles():
  mlp = models.MLP(in_features=64, width=8, layers=3, classes=10, rngs=nnx.Rngs(0))
  roles = _roles(mlp)
  assert (roles["embed/kernel"], roles["hidden/1/kernel"], roles["head/kernel"], roles["head/bias"]) == (
    "embedding",
    "hidden",
    "head",
    "vector",
  )
  cnn = models.CNN(in_channels=1, width=4, layers=2, classes=10, rngs=nnx.Rngs(0))
  assert _roles(cnn)["hidden/0/kernel"] == "hidden"
  assert cnn(jnp.zeros((2, 8, 8, 1))).shape == (2, 10)


def test_gpt_rejects_heads_that_do_not_split_the_width():
  with pytest.raises(ValueError, match="width 30 must split into 4 heads of even size"):
    models.GPT(vocab=256, width=30, layers=1, heads=4, seq_len=8, positions="rope", rngs=nnx.Rngs(0))


def test_attention_reports_each_heads_largest_causal_logit():
  width, heads, t = 16, 2, 6
  attn = models.Attention(width, heads, use_rope=True, rngs=nnx.Rngs(0), report_logits=True)
  x = jax.random.normal(jax.random.key(1), (3, t, width))
  y, sown = nnx.capture(attn, nnx.Intermediate)(x)
  (got,) = nnx.to_pure_dict(sown)["max_logits"]
  # Reference: the fused kernel's [Q | K | V] heads, RoPE, scaled dot products, causal mask.
  qkv = (x @ attn.qkv.kernel[...]).reshape(3, t, 3, heads, width // heads)
  q, k = models.rope(qkv[:, :, 0]), models.rope(qkv[:, :, 1])
  logits = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(width // heads)
  logits = np.where(np.tril(np.ones((t, t), bool)), logits, -np.inf)
  np.testing.assert_allclose(got, logits.max(axis=(0, 2, 3)), rtol=1e-5)
  # Off by default: nothing sown, the same output.
  plain = models.Attention(width, heads, use_rope=True, rngs=nnx.Rngs(0))
  out, nothing = nnx.capture(plain, nnx.Intermediate)(x)
  assert not jax.tree.leaves(nnx.to_pure_dict(nothing))
  np.testing.assert_allclose(out, y, rtol=1e-6)
