"""MuonClip on a Flax nnx attention block: Muon + QK-clip (Kimi K2).

The attention module returns its largest pre-softmax logit per head next
to its output; the loss returns them as auxiliary data, and the step hands
them to ``optimizer.update(model, grads, max_logits=...)``, which
``nnx.Optimizer`` forwards to ``matopt.qk_clip`` at the end of the chain.
``max_logits`` mirrors the params tree down to the attention module.

Run: python examples/qk_clip_nnx.py [--steps 100] [--tau 1] [--no-clip]
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import optax
from flax import nnx

import matopt


class Attention(nnx.Module):
  """Single-layer multi-head self-attention in nnx.MultiHeadAttention's
  layout: query/key/value kernels (d, heads, d_head)."""

  def __init__(self, d: int, heads: int, *, rngs: nnx.Rngs):
    self.heads, self.d_head = heads, d // heads
    make = lambda: nnx.LinearGeneral(d, (heads, self.d_head), rngs=rngs)
    self.query, self.key, self.value = make(), make(), make()
    self.out = nnx.LinearGeneral((heads, self.d_head), d, axis=(-2, -1), rngs=rngs)

  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    q, k, v = self.query(x), self.key(x), self.value(x)  # (batch, t, heads, d_head)
    logits = jnp.einsum("bthk,bshk->bhts", q, k) / jnp.sqrt(self.d_head)
    weights = jax.nn.softmax(logits, axis=-1)
    # Per head, the largest logit over batch and positions (what QK-clip needs).
    return self.out(jnp.einsum("bhts,bshk->bthk", weights, v)), jnp.max(logits, axis=(0, 2, 3))


class Model(nnx.Module):
  def __init__(self, vocab: int = 16, d: int = 32, heads: int = 4, *, rngs: nnx.Rngs):
    self.embed = nnx.Embed(vocab, d, rngs=rngs)
    self.attn = Attention(d, heads, rngs=rngs)
    self.head = nnx.Linear(d, vocab, rngs=rngs)

  def __call__(self, tokens: jax.Array) -> tuple[jax.Array, dict]:
    h, max_logits = self.attn(self.embed(tokens))
    return self.head(h), {"attn": max_logits}


def batch(key: jax.Array, size: int = 32, length: int = 12, vocab: int = 16) -> tuple[jax.Array, jax.Array]:
  """Retrieval: the target at every position is the first token, which
  sharp attention on position 0 solves (and which grows the logits)."""
  tokens = jax.random.randint(key, (size, length), 0, vocab)
  return tokens, jnp.broadcast_to(tokens[:, :1], tokens.shape)


def train(steps: int = 100, tau: float = 1.0, clip: bool = True, learning_rate: float = 0.08) -> list[float]:
  """Returns the largest attention logit seen at each step."""
  model = Model(rngs=nnx.Rngs(0))
  tx = matopt.muon(learning_rate, adam_learning_rate=learning_rate)
  if clip:
    tx = optax.chain(tx, matopt.qk_clip(tau))
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

  @nnx.jit
  def step(model, optimizer, tokens, targets):
    def loss_fn(model):
      logits, max_logits = model(tokens)
      return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean(), max_logits

    (loss, max_logits), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
    if clip:
      optimizer.update(model, grads, max_logits=max_logits)
    else:
      optimizer.update(model, grads)
    return loss, jnp.max(max_logits["attn"])

  peaks = []
  for i in range(steps):
    _, peak = step(model, optimizer, *batch(jax.random.key(i)))
    peaks.append(float(peak))
  return peaks


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=100)
  parser.add_argument("--tau", type=float, default=1.0)
  parser.add_argument("--no-clip", action="store_true")
  args = parser.parse_args()
  peaks = train(args.steps, args.tau, clip=not args.no_clip)
  for i in range(0, args.steps, max(1, args.steps // 10)):
    print(f"step {i:4d}  max logit {peaks[i]:8.2f}")
  print(f"largest logit over the run: {max(peaks):.2f} (tau {args.tau})")


if __name__ == "__main__":
  main()
