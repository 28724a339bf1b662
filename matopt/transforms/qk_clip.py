"""QK-clip (MuonClip, Kimi K2): rescale W_q and W_k of heads whose attention
logits grew past a threshold."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from matopt import _checks, _tree


def _path(path: tuple) -> tuple[str, ...]:
  return tuple(_tree.key_name(e) for e in path)


def _module_of(logit_path: tuple[str, ...], param_paths: list[tuple[str, ...]], query: str) -> tuple[str, ...]:
  """The longest prefix of a logits path under which ``query`` leaves exist
  (so ``nnx.sow`` output, ``{..., "attn": {"max_logits": (x,)}}``, works as is)."""
  for i in range(len(logit_path), -1, -1):
    prefix = logit_path[:i] + (query,)
    if any(p[: len(prefix)] == prefix for p in param_paths):
      return logit_path[:i]
  raise ValueError(
    f"qk_clip: no parameters named {query!r} under max_logits path {'/'.join(logit_path)!r}."
    " max_logits must mirror the params tree down to each attention module"
    " (whose query/key submodules are named by `query=` and `key=`)."
  )


def _scale_heads(w: jax.Array, factor: jax.Array, head_dim: int | None, sections: int, name: str) -> jax.Array:
  """``w`` with each head's slice multiplied by ``factor[..., h]``.

  ``factor`` has shape ``(*lead, heads)``; ``w`` is ``(*lead, ..., heads,
  d_head)`` (``head_dim=None``) or ``(*lead, ..., sections·heads·head_dim)``
  with the first two sections (Q, K of a fused kernel) scaled."""
  heads = factor.shape[-1]
  lead = factor.shape[:-1]
  if w.shape[: len(lead)] != lead:
    raise ValueError(
      f"qk_clip: leaf {name!r} of shape {w.shape} does not start with max_logits' leading shape {lead}."
      " A stacked (scanned) attention reports one row of heads per layer: (layers, heads); an"
      " unstacked one reports (heads,)."
    )
  if head_dim is None:
    if w.ndim < len(lead) + 2 or w.shape[-2] != heads:
      raise ValueError(
        f"qk_clip: leaf {name!r} of shape {w.shape} has no head axis of size {heads} at -2."
        " For flat (d, heads·head_dim) kernels pass head_dim=."
      )
    f = factor.reshape(lead + (1,) * (w.ndim - len(lead) - 2) + (heads, 1))
    return (w * f.astype(w.dtype)).astype(w.dtype)
  width = sections * heads * head_dim
  if w.shape[-1] != width:
    raise ValueError(
      f"qk_clip: leaf {name!r} of shape {w.shape}: last axis must be {sections}×{heads} heads×{head_dim}"
      f" = {width} (max_logits has {heads} head{'' if heads == 1 else 's'})."
    )
  # One factor per column, [Q heads | K heads | V ones], times the kernel as
  # it is: reshaping a kernel whose last axis is split over a mesh into
  # (sections, heads, head_dim) and back is refused under explicit axes.
  scaled_sections = min(sections, 2)  # Q and K of a fused kernel; V untouched
  per_column = jnp.repeat(factor, head_dim, axis=-1)
  mult = jnp.concatenate(
    [per_column] * scaled_sections
    + [jnp.ones(lead + ((sections - scaled_sections) * heads * head_dim,), factor.dtype)],
    axis=-1,
  )
  mult = mult.reshape(lead + (1,) * (w.ndim - len(lead) - 1) + (width,))
  return (w * mult.astype(w.dtype)).astype(w.dtype)


def _scale_grouped_queries(w: jax.Array, gamma: jax.Array, head_dim: int, kv_heads: int, name: str) -> jax.Array:
  """A fused ``[Q | K | V]`` kernel with grouped keys: Q's heads scaled by ``gamma``, K and V untouched."""
  heads = gamma.shape[-1]
  width = (heads + 2 * kv_heads) * head_dim
  if w.shape[-1] != width:
    raise ValueError(
      f"qk_clip: leaf {name!r} of shape {w.shape}: last axis must be (heads + 2·kv_heads)×head_dim ="
      f" ({heads} + 2×{kv_heads})×{head_dim} = {width} (max_logits has {heads} head{'' if heads == 1 else 's'})."
    )
  q, kv = jnp.split(w, [heads * head_dim], axis=-1)
  return jnp.concatenate([_scale_heads(q, gamma, head_dim, 1, name), kv], axis=-1)


def _check_options(tau: float, query: str, key: str, head_dim: int | None, kv_heads: int | None) -> None:
  """qk_clip's construction-time checks."""
  _checks.check_range("tau", tau, 0.0, float("inf"), lo_open=True)
  for name, value in (("query", query), ("key", key)):
    if not isinstance(value, str) or not value:
      raise ValueError(f"qk_clip: {name} must be the name of a child module, got {value!r}.")
  for name, value in (("head_dim", head_dim), ("kv_heads", kv_heads)):
    if value is not None and not _checks.is_positive_int(value):
      raise ValueError(f"qk_clip: {name} must be None or a positive int, got {value!r}.")
  if query == key and head_dim is None:
    raise ValueError("qk_clip: a fused QKV kernel (query == key) needs head_dim= to find its Q and K heads.")


def _clip_factors(
  max_logits: Any, param_paths: list[tuple[str, ...]], query: str, tau: float
) -> dict[tuple[str, ...], jax.Array]:
  """Per attention module, γ = min(1, τ / S_max) per head (1 where S_max ≤ τ)."""
  factors: dict[tuple[str, ...], jax.Array] = {}
  for lpath, logits in jax.tree_util.tree_flatten_with_path(max_logits)[0]:
    module = _module_of(_path(lpath), param_paths, query)
    if module in factors:
      raise ValueError(
        f"qk_clip: two max_logits leaves for attention module {'/'.join(module)!r}. Report one"
        " array of per-head maxima per module (take the max over calls if it runs more than once)."
      )
    s = jnp.asarray(logits, jnp.float32)
    gamma = jnp.where(s > tau, tau / jnp.where(s > tau, s, 1.0), 1.0)
    factors[module] = gamma.reshape(s.shape if s.ndim else (1,))
  return factors


def qk_clip(
  tau: float = 100.0,
  *,
  query: str = "query",
  key: str = "key",
  head_dim: int | None = None,
  kv_heads: int | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""QK-clip: after the step, shrink W_q and W_k of heads whose logits exceeded τ.

  For each attention head :math:`h` with largest observed pre-softmax logit
  :math:`S_h = \max q_h^\top k_h` (over the batch, reported by the model),

  .. math::
    \gamma_h = \min(1, \tau / S_h), \qquad
    W_q^{(h)} \leftarrow \sqrt{\gamma_h}\, W_q^{(h)}, \quad
    W_k^{(h)} \leftarrow \sqrt{\gamma_h}\, W_k^{(h)}

  applied to the *updated* weights, so every logit of head :math:`h` shrinks
  by :math:`\gamma_h` (Kimi K2's MuonClip). As an update: ``u ← f·(W + u) −
  W``. Place it last in the chain (after the learning rate) and pass the
  logits to ``update``::

    tx = optax.chain(matopt.muon(0.02), matopt.qk_clip(100.0))
    updates, state = tx.update(grads, state, params, max_logits=max_logits)

  (``nnx.Optimizer.update(model, grads, max_logits=...)`` forwards it).
  ``max_logits`` mirrors the params tree down to each attention module: a
  leaf of shape ``(heads,)`` (or ``(*lead, heads)`` for stacked layers; a
  scalar clips the whole module) at that module's path, or deeper, e.g. the
  ``{"max_logits": (x,)}`` of an ``nnx.sow``. Every leaf under the module's
  ``query`` and ``key`` children (kernel and bias) is scaled per head.

  With grouped-query attention (``kv_heads`` key heads, each shared by
  ``heads / kv_heads`` query heads) a key head cannot take one √γ for heads
  that need different ones, and shrinking it for the worst head would also
  shrink heads that never exceeded τ. As K2 does for its shared rotary key
  (§2.1: :math:`q^R` takes γ, the shared :math:`k^R` is untouched), the query
  head takes the whole factor, :math:`W_q^{(h)} \leftarrow \gamma_h W_q^{(h)}`,
  and the keys are left alone; every logit of head :math:`h` again shrinks by
  :math:`\gamma_h`.

  Args:
    tau: threshold τ > 0 (Kimi K2: 100).
    query: name of the query projection child of an attention module.
    key: name of the key projection child; equal to ``query`` for a fused
      kernel whose last axis is ``[Q | K | V]``, each ``heads × head_dim``
      (needs ``head_dim``; V is left alone).
    head_dim: ``None`` for kernels laid out ``(..., heads, head_dim)``
      (``nnx.MultiHeadAttention``); an int for flat ``(..., heads·head_dim)``
      kernels, heads-major.
    kv_heads: number of key heads under grouped-query attention (``None``:
      as many as query heads). A fused kernel is then ``[Q | K | V]`` with
      ``heads``, ``kv_heads`` and ``kv_heads`` heads of ``head_dim``.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` (stateless) whose
    ``update`` takes ``max_logits=`` (one entry per query head).

  References:
    Kimi Team, 2025. Kimi K2: Open Agentic Intelligence. arXiv:2507.20534,
    §2.1 (MuonClip).
  """
  _check_options(tau, query, key, head_dim, kv_heads)
  sections = 3 if query == key else 1

  def update_fn(updates, state, params=None, *, max_logits=None, **extra_args):
    del extra_args
    if params is None:
      raise ValueError("qk_clip needs params: call update(updates, state, params, max_logits=...).")
    if max_logits is None:
      raise ValueError("qk_clip needs the model's attention logits: update(..., max_logits=...), see its docstring.")
    param_items = jax.tree_util.tree_flatten_with_path(params)[0]
    param_paths = [_path(p) for p, _ in param_items]
    factors = _clip_factors(max_logits, param_paths, query, tau)

    def clip(path, u, w):
      p = _path(path)
      for module, gamma in factors.items():
        n = len(module)
        if p[:n] == module and len(p) > n and p[n] in (query, key):
          name = "/".join(p)
          if _grouped(gamma, name):
            if sections == 3:
              new = _scale_grouped_queries(w + u, gamma, head_dim, kv_heads, name)
            elif p[n] == key:
              return u  # shared key heads stay; their query heads take all of γ
            else:
              new = _scale_heads(w + u, gamma, head_dim, 1, name)
          elif gamma.shape == (1,) and head_dim is None and sections == 1:
            new = (w + u) * jnp.sqrt(gamma[0]).astype(w.dtype)
          else:
            new = _scale_heads(w + u, jnp.sqrt(gamma), head_dim, sections, name)
          return (new - w).astype(u.dtype)
      return u

    def _grouped(gamma, name):
      if kv_heads is None or kv_heads == gamma.shape[-1]:
        return False
      if gamma.shape[-1] % kv_heads:
        raise ValueError(
          f"qk_clip: max_logits for {name!r} has {gamma.shape[-1]} heads, not a multiple of"
          f" kv_heads={kv_heads}; report one maximum per query head."
        )
      return True

    return jax.tree_util.tree_map_with_path(clip, updates, params), state

  return optax.GradientTransformationExtraArgs(optax.init_empty_state, update_fn)
