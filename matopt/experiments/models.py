"""Small Flax nnx models for the main job.

Module names are chosen so :func:`matopt.labels.by_role` finds the roles:
``embed`` (input layer), ``head`` (output layer), everything else hidden;
biases and norm scales are vectors.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from matopt.experiments.config import count


def rope(x: jax.Array, base: float = 10000.0) -> jax.Array:
  """Rotary position embedding (Su et al. 2021) on ``(batch, time, heads, dim)``,
  rotating the two halves of each head's features."""
  t, d = x.shape[1], x.shape[-1]
  freqs = base ** (-jnp.arange(0, d // 2, dtype=jnp.float32) / (d // 2))
  angles = jnp.arange(t, dtype=jnp.float32)[:, None] * freqs[None, :]
  cos, sin = jnp.cos(angles)[None, :, None, :], jnp.sin(angles)[None, :, None, :]
  x1, x2 = x[..., : d // 2], x[..., d // 2 :]
  return jnp.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1).astype(x.dtype)


class Attention(nnx.Module):
  """Causal self-attention with a fused QKV kernel ``(d, 3d)``, laid out
  ``[Q | K | V]`` with heads-major columns (what ``matopt.qk_clip(query="qkv",
  key="qkv", head_dim=...)`` expects). With ``report_logits`` it sows each
  head's largest pre-softmax logit (over batch and positions) as the
  ``nnx.Intermediate`` ``max_logits``, for QK-clip; that costs one more
  ``QKᵀ``, so it is off unless an optimizer needs it."""

  def __init__(self, width: int, heads: int, *, use_rope: bool, rngs: nnx.Rngs, report_logits: bool = False):
    self.heads, self.use_rope, self.report_logits = heads, use_rope, report_logits
    self.qkv = nnx.Linear(width, 3 * width, use_bias=False, rngs=rngs)
    self.proj = nnx.Linear(width, width, use_bias=False, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    b, t, d = x.shape
    q, k, v = jnp.split(self.qkv(x).reshape(b, t, 3 * self.heads, d // self.heads), 3, axis=2)
    if self.use_rope:
      q, k = rope(q), rope(k)
    if self.report_logits:
      logits = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) / jnp.sqrt(d // self.heads)
      causal = jnp.tril(jnp.ones((t, t), bool))
      self.sow(nnx.Intermediate, "max_logits", jnp.max(jnp.where(causal, logits, -jnp.inf), axis=(0, 2, 3)))
    y = jax.nn.dot_product_attention(q, k, v, is_causal=True)
    return self.proj(y.reshape(b, t, d))


class Block(nnx.Module):
  """Pre-norm transformer block: attention and a 4× GELU MLP."""

  def __init__(self, width: int, heads: int, *, use_rope: bool, rngs: nnx.Rngs, report_logits: bool = False):
    self.norm1 = nnx.RMSNorm(width, rngs=rngs)
    self.attn = Attention(width, heads, use_rope=use_rope, rngs=rngs, report_logits=report_logits)
    self.norm2 = nnx.RMSNorm(width, rngs=rngs)
    self.fc = nnx.Linear(width, 4 * width, use_bias=False, rngs=rngs)
    self.proj = nnx.Linear(4 * width, width, use_bias=False, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = x + self.attn(self.norm1(x))
    return x + self.proj(jax.nn.gelu(self.fc(self.norm2(x))))


class GPT(nnx.Module):
  """Byte-level GPT: token embedding, RoPE or learned positions, pre-norm
  blocks, untied head. Input ``(batch, time)`` int32, output logits.
  ``report_logits``: every attention sows its per-head largest logit."""

  def __init__(
    self,
    *,
    vocab: int,
    width: int,
    layers: int,
    heads: int,
    seq_len: int,
    positions: str,
    rngs: nnx.Rngs,
    report_logits: bool = False,
  ):
    if width % heads or (width // heads) % 2:
      raise ValueError(f"width {width} must split into {count(heads, 'head')} of even size.")
    self.embed = nnx.Embed(vocab, width, rngs=rngs)
    use_rope = positions == "rope"
    self.pos_embed = None if use_rope else nnx.Param(0.02 * jax.random.normal(rngs.params(), (seq_len, width)))
    self.blocks = nnx.List(
      [Block(width, heads, use_rope=use_rope, rngs=rngs, report_logits=report_logits) for _ in range(layers)]
    )
    self.norm = nnx.RMSNorm(width, rngs=rngs)
    # Zero head (as modded-nanogpt): the first loss is exactly log(vocab).
    self.head = nnx.Linear(width, vocab, use_bias=False, kernel_init=nnx.initializers.zeros, rngs=rngs)

  def __call__(self, tokens: jax.Array) -> jax.Array:
    x = self.embed(tokens)
    if self.pos_embed is not None:
      x = x + self.pos_embed[None, : tokens.shape[1]]
    for block in self.blocks:
      x = block(x)
    return self.head(self.norm(x))


class MLP(nnx.Module):
  """Image classifier: flatten, ``layers`` GELU layers of ``width``, head."""

  def __init__(self, *, in_features: int, width: int, layers: int, classes: int, rngs: nnx.Rngs):
    self.embed = nnx.Linear(in_features, width, rngs=rngs)
    self.hidden = nnx.List([nnx.Linear(width, width, rngs=rngs) for _ in range(layers - 1)])
    self.head = nnx.Linear(width, classes, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = jax.nn.gelu(self.embed(x.reshape(x.shape[0], -1)))
    for layer in self.hidden:
      x = jax.nn.gelu(layer(x))
    return self.head(x)


class CNN(nnx.Module):
  """Small CNN: 3×3 convolutions (4-D kernels, viewed as matrices by the
  optimizers), global average pooling, head."""

  def __init__(self, *, in_channels: int, width: int, layers: int, classes: int, rngs: nnx.Rngs):
    self.embed = nnx.Conv(in_channels, width, (3, 3), rngs=rngs)
    self.hidden = nnx.List([nnx.Conv(width, width, (3, 3), rngs=rngs) for _ in range(layers - 1)])
    self.head = nnx.Linear(width, classes, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = jax.nn.gelu(self.embed(x))
    for layer in self.hidden:
      x = jax.nn.gelu(layer(x))
    return self.head(x.mean(axis=(1, 2)))
