"""QK-clip: each head's logits shrink by exactly min(1, τ/S_h) after the step."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import matopt

D, H, DH, TAU = 8, 4, 3, 10.0
S = jnp.asarray([5.0, 20.0, 10.0, 400.0])  # heads 1 and 3 above τ
GAMMA = np.minimum(1.0, TAU / np.asarray(S))


def _normal(shape, seed):
  return jax.random.normal(jax.random.key(seed), shape)


def _attn(seed=0):
  # nnx.MultiHeadAttention layout: kernels (d, heads, d_head), biases (heads, d_head).
  return {
    name: {"kernel": _normal((D, H, DH), seed + i), "bias": _normal((H, DH), seed + 10 + i)}
    for i, name in enumerate(("query", "key", "value"))
  }


def _logits(p, x):
  q = jnp.einsum("td,dhk->thk", x, p["query"]["kernel"]) + p["query"]["bias"][None]
  k = jnp.einsum("td,dhk->thk", x, p["key"]["kernel"]) + p["key"]["bias"][None]
  return jnp.einsum("thk,shk->hts", q, k)


def _step(tx, params, max_logits):
  updates = jax.tree.map(lambda w: 0.1 * _normal(w.shape, 99), params)
  clipped, _ = jax.jit(tx.update)(updates, tx.init(params), params, max_logits=max_logits)
  return optax.apply_updates(params, updates), optax.apply_updates(params, clipped)


@pytest.mark.parametrize(
  "logits_tree",
  [
    lambda s: {"blocks": {"0": {"attn": s}}},
    lambda s: {"blocks": {"0": {"attn": {"max_logits": (s,)}}}},  # what nnx.sow gives
  ],
  ids=["module_path", "sow_path"],
)
def test_each_head_logits_shrink_by_gamma(logits_tree):
  params = {"blocks": {"0": {"attn": _attn()}}, "head": {"kernel": _normal((D, 5), 7)}}
  plain, clipped = _step(matopt.qk_clip(TAU), params, logits_tree(S))
  x = _normal((6, D), 3)
  before = _logits(plain["blocks"]["0"]["attn"], x)
  after = _logits(clipped["blocks"]["0"]["attn"], x)
  np.testing.assert_allclose(after, before * GAMMA[:, None, None], rtol=1e-5, atol=1e-5)
  for untouched in (clipped["blocks"]["0"]["attn"]["value"], clipped["head"]):
    ref = plain["blocks"]["0"]["attn"]["value"] if "bias" in untouched else plain["head"]
    jax.tree.map(np.testing.assert_array_equal, untouched, ref)


def test_flat_and_fused_kernels_with_head_dim():
  attn = _attn(1)
  flat = {n: {"kernel": attn[n]["kernel"].reshape(D, H * DH)} for n in ("query", "key", "value")}
  _, clipped = _step(matopt.qk_clip(TAU, head_dim=DH), {"attn": flat}, {"attn": S})
  plain, _ = _step(matopt.qk_clip(TAU, head_dim=DH), {"attn": flat}, {"attn": jnp.zeros(H)})  # nothing above τ
  q = clipped["attn"]["query"]["kernel"].reshape(D, H, DH)
  np.testing.assert_allclose(
    q, np.asarray(plain["attn"]["query"]["kernel"]).reshape(D, H, DH) * np.sqrt(GAMMA)[:, None], rtol=1e-6
  )
  # Fused [Q | K | V]: Q and K heads scaled, V left alone.
  fused = {"attn": {"qkv": {"kernel": jnp.concatenate([flat[n]["kernel"] for n in ("query", "key", "value")], -1)}}}
  tx = matopt.qk_clip(TAU, query="qkv", key="qkv", head_dim=DH)
  plain, clipped = _step(tx, fused, {"attn": S})
  sections = np.asarray(clipped["attn"]["qkv"]["kernel"]).reshape(D, 3, H, DH)
  ref = np.asarray(plain["attn"]["qkv"]["kernel"]).reshape(D, 3, H, DH)
  factor = np.sqrt(GAMMA)[:, None]
  np.testing.assert_allclose(sections[:, :2], ref[:, :2] * factor, rtol=1e-6)
  np.testing.assert_array_equal(sections[:, 2], ref[:, 2])


def test_stacked_layers():
  # Layers stacked on a leading axis (nnx.scan): max_logits (layers, heads).
  layers = 2
  attn = jax.tree.map(lambda w: jnp.stack([w, 2 * w]), _attn(2))
  s = jnp.stack([S, jnp.ones(H)])
  plain, clipped = _step(matopt.qk_clip(TAU), {"attn": attn}, {"attn": s})
  g = np.ones((layers, 1, H, 1))
  g[0, 0, :, 0] = np.sqrt(GAMMA)
  np.testing.assert_allclose(
    clipped["attn"]["query"]["kernel"], np.asarray(plain["attn"]["query"]["kernel"]) * g, rtol=1e-6
  )


def test_heads_below_tau_and_finite_inputs_leave_weights():
  params = {"attn": _attn(4)}
  for s in (jnp.zeros(H), jnp.full(H, TAU), jnp.full(H, -1e30)):
    plain, clipped = _step(matopt.qk_clip(TAU), params, {"attn": s})
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6), clipped, plain)
  _, clipped = _step(matopt.qk_clip(TAU), params, {"attn": jnp.full(H, 1e30)})
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(clipped))


@pytest.mark.parametrize(
  ("kwargs", "message"),
  [
    ({"tau": 0.0}, "tau"),
    ({"query": ""}, "query must be the name of a child module"),
    ({"head_dim": 0}, "head_dim must be None or a positive int"),
    ({"kv_heads": 0}, "kv_heads must be None or a positive int"),
    ({"query": "qkv", "key": "qkv"}, "fused QKV kernel .* needs head_dim"),
  ],
)
def test_bad_options_raise_at_construction(kwargs, message):
  with pytest.raises(ValueError, match=message):
    matopt.qk_clip(**kwargs)


def test_bad_calls_name_the_problem():
  params = {"blocks": {"attn": _attn()}}
  tx = matopt.qk_clip(TAU)
  state = tx.init(params)
  with pytest.raises(ValueError, match="needs the model's attention logits"):
    tx.update(params, state, params)
  with pytest.raises(ValueError, match="needs params"):
    tx.update(params, state, max_logits={"blocks": {"attn": S}})
  with pytest.raises(ValueError, match="no parameters named 'query' under max_logits path 'mlp'"):
    tx.update(params, state, params, max_logits={"mlp": S})
  with pytest.raises(
    ValueError, match=r"leaf 'blocks/attn/(query|key)/(kernel|bias)' of shape .* no head axis of size 5"
  ):
    tx.update(params, state, params, max_logits={"blocks": {"attn": jnp.ones(5)}})
  with pytest.raises(
    ValueError, match=r"leaf 'blocks/attn/.*' of shape \(.*\) does not start with .* \(2,\)\. A stacked"
  ):
    tx.update(params, state, params, max_logits={"blocks": {"attn": jnp.ones((2, H))}})
  with pytest.raises(ValueError, match=r"two max_logits leaves for attention module 'blocks/attn'\. Report one"):
    tx.update(params, state, params, max_logits={"blocks": {"attn": {"a": S, "b": S}}})
  flat = {"attn": {"query": {"kernel": jnp.ones((D, H * DH + 1))}, "key": {"kernel": jnp.ones((D, H * DH))}}}
  with pytest.raises(
    ValueError, match=r"leaf 'attn/query/kernel' of shape \(8, 13\): last axis must be 1×4 heads×3 = 12"
  ):
    matopt.qk_clip(TAU, head_dim=DH).update(flat, state, flat, max_logits={"attn": S})
  with pytest.raises(ValueError, match="pass head_dim="):
    tx.update(
      {"attn": {"query": {"kernel": jnp.ones((D, H * DH))}, "key": {"kernel": jnp.ones((D, H * DH))}}},
      state,
      {"attn": {"query": {"kernel": jnp.ones((D, H * DH))}, "key": {"kernel": jnp.ones((D, H * DH))}}},
      max_logits={"attn": S},
    )


KV = 2  # grouped-query attention: each key head serves H // KV query heads


def _gqa_logits(q_kernel, k_kernel, x):
  q = jnp.einsum("td,dhk->thk", x, q_kernel)
  k = jnp.repeat(jnp.einsum("td,dhk->thk", x, k_kernel), H // KV, axis=1)
  return jnp.einsum("thk,shk->hts", q, k)


def test_grouped_query_heads_take_all_of_gamma():
  attn = {
    "query": {"kernel": _normal((D, H, DH), 0)},
    "key": {"kernel": _normal((D, KV, DH), 1)},
    "value": {"kernel": _normal((D, KV, DH), 2)},
  }
  plain, clipped = _step(matopt.qk_clip(TAU, kv_heads=KV), {"attn": attn}, {"attn": S})
  x = _normal((6, D), 3)
  before = _gqa_logits(plain["attn"]["query"]["kernel"], plain["attn"]["key"]["kernel"], x)
  after = _gqa_logits(clipped["attn"]["query"]["kernel"], clipped["attn"]["key"]["kernel"], x)
  np.testing.assert_allclose(after, before * GAMMA[:, None, None], rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(clipped["attn"]["key"]["kernel"], plain["attn"]["key"]["kernel"])
  # kv_heads == heads is ordinary attention: √γ on each side.
  _, same = _step(matopt.qk_clip(TAU, kv_heads=H), {"attn": _attn()}, {"attn": S})
  _, ref = _step(matopt.qk_clip(TAU), {"attn": _attn()}, {"attn": S})
  jax.tree.map(np.testing.assert_array_equal, same, ref)


def test_grouped_fused_kernel():
  # [Q (H·DH) | K (KV·DH) | V (KV·DH)]: only Q's heads change, each by γ_h.
  w = _normal((D, (H + 2 * KV) * DH), 5)
  tx = matopt.qk_clip(TAU, query="qkv", key="qkv", head_dim=DH, kv_heads=KV)
  plain, clipped = _step(tx, {"attn": {"qkv": {"kernel": w}}}, {"attn": S})
  new, old = np.asarray(clipped["attn"]["qkv"]["kernel"]), np.asarray(plain["attn"]["qkv"]["kernel"])
  q_new, q_old = new[:, : H * DH].reshape(D, H, DH), old[:, : H * DH].reshape(D, H, DH)
  np.testing.assert_allclose(q_new, q_old * GAMMA[:, None], rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(new[:, H * DH :], old[:, H * DH :])
  bad = {"attn": {"qkv": {"kernel": _normal((D, 3 * H * DH), 5)}}}
  with pytest.raises(ValueError, match=r"last axis must be \(heads \+ 2·kv_heads\)×head_dim = \(4 \+ 2×2\)×3 = 24"):
    tx.update(bad, tx.init(bad), bad, max_logits={"attn": S})


def test_grouped_heads_must_divide():
  attn = {"query": {"kernel": _normal((D, H, DH), 0)}, "key": {"kernel": _normal((D, 3, DH), 1)}}
  tx = matopt.qk_clip(TAU, kv_heads=3)
  with pytest.raises(ValueError, match="has 4 heads, not a multiple of kv_heads=3; report one maximum per query head"):
    tx.update({"attn": attn}, tx.init(attn), {"attn": attn}, max_logits={"attn": S})
