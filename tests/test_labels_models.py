"""Roles and matrix views on real model trees: Hugging Face Flax models and
Flax nn.scan / nnx.vmap / nnx.scan stacks.

Trees are built from the packages' own init code with tiny configs (shapes
only, through ``jax.eval_shape``): no weights are downloaded. Each model lists
every kind of leaf with the role (:func:`matopt.labels.by_role`) and the
matrix view (what muon's and scion's transforms resolve: inferred from path and
shape, or given through :func:`matopt.dimension_numbers_by_path`) an expert
gives it; every leaf must match exactly one kind, so a leaf the test did not
think about fails it. One muon and one scion step on each tree is traced
(``jax.eval_shape``) and keeps every shape and dtype.
"""

import functools
import re
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import nnx

import matopt
from matopt import _tree, labels
from matopt.transforms import views

DN = matopt.DimensionNumbers

transformers = pytest.importorskip("transformers", reason="the dev extra installs transformers<5")


def _hf_shapes(cls, config, input_shape):
  # The package's own init, traced for shapes only; its code relies on numpy
  # rank promotion, which tests/conftest.py makes an error for our code.
  with jax.numpy_rank_promotion("allow"):
    model = cls(config, input_shape=input_shape, _do_init=False)
    return jax.eval_shape(lambda: model.init_weights(jax.random.key(0), input_shape))


def _roles(tree):
  flat = jax.tree_util.tree_flatten_with_path(labels.by_role(tree))[0]
  return {_tree.path_str(p): role for p, role in flat}


def _describe(view):
  if view is None:
    return "no matrix view (a vector)"
  return f"{view.batch} matrix(es) (fan_in {view.fan_in}, fan_out {view.fan_out}) over axes {view.reduction_axes} -> {view.output_axes}"


def _check(tree, expected, dimension_numbers=None):
  """Every leaf matches exactly one ``(regex, role, view)`` kind and has that
  role and view (``view`` a DimensionNumbers, None for a vector)."""
  roles = _roles(tree)
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  # The views muon's and scion's transforms resolve (views.matrix_transform).
  got = views.resolve_views(dimension_numbers, tree, transform="test", vectors_ok=True)
  for (path, leaf), view in zip(leaves, got):
    text = _tree.path_str(path)
    kinds = [(pattern, role, dn) for pattern, role, dn in expected if re.search(pattern, text)]
    assert len(kinds) == 1, f"{text}: matched {kinds}"
    _, role, dn = kinds[0]
    assert roles[text] == role, f"{text}: labelled {roles[text]!r}, an expert says {role!r}"
    want = None if dn is None else views.make_view(tuple(leaf.shape), dn, text)
    assert view == want, f"{text} {tuple(leaf.shape)}: viewed as {_describe(view)}, an expert says {_describe(want)}"
  for pattern, _, _ in expected:  # every kind listed is present in the tree
    assert any(re.search(pattern, path) for path in roles), pattern
  return roles


def _steps(tree, dimension_numbers=None, labels_fn=None, recipe="language"):
  """One muon and one scion step, traced: every update and state leaf keeps
  its shape and dtype."""
  signature = lambda t: jax.tree.map(lambda x: (tuple(x.shape), x.dtype), t)
  for tx in (
    matopt.muon(0.02, dimension_numbers=dimension_numbers, labels=labels_fn),
    matopt.scion(0.01, recipe=recipe, dimension_numbers=dimension_numbers, labels=labels_fn),
  ):
    state = jax.eval_shape(tx.init, tree)
    updates, new_state = jax.eval_shape(tx.update, tree, state, tree)
    assert signature(updates) == signature(tree)
    assert signature(new_state) == signature(state)


# Hugging Face's Flax GPT-2 keeps its Conv1D kernels as (fan_out, fan_in)
# (y = x @ kernel.T), which neither path nor shape reveals (a Flax nanoGPT port
# names nn.Dense (fan_in, fan_out) kernels c_attn/c_fc/c_proj too): the README's
# recipe names the axes, and splits the fused c_attn into Q, K and V.
GPT2_VIEWS = matopt.dimension_numbers_by_path(
  {
    r"attn/c_attn/kernel$": DN(reduction_axis=1, output_axis=0, output_split=3),
    r"(attn/c_proj|mlp/c_fc|mlp/c_proj)/kernel$": DN(reduction_axis=1, output_axis=0),
  }
)


def test_gpt2_lm_head_model():
  # The LM head is tied to wte: there is no head leaf to find.
  config = transformers.GPT2Config(n_embd=16, n_layer=2, n_head=2, vocab_size=50, n_positions=32)
  tree = _hf_shapes(transformers.FlaxGPT2LMHeadModel, config, (1, 8))
  assert tree["transformer"]["h"]["0"]["mlp"]["c_fc"]["kernel"].shape == (64, 16)  # (fan_out, fan_in)
  _check(
    tree,
    [
      (r"transformer/(wte|wpe)/embedding$", "embedding", DN(0, 1)),  # (vocab or positions, d)
      (r"h/\d+/attn/c_attn/kernel$", "hidden", DN(1, 0, output_split=3)),  # Q, K, V: three (16, 16)
      (r"h/\d+/(attn/c_proj|mlp/c_fc|mlp/c_proj)/kernel$", "hidden", DN(1, 0)),
      (r"/bias$", "vector", None),
      (r"(ln_\d|ln_f)/scale$", "vector", None),
    ],
    GPT2_VIEWS,
  )
  # Without the recipe the view is the transpose: c_fc (d → 4d) read as 4d → d.
  default = dict(zip(_roles(tree), views.resolve_views(None, tree, transform="test", vectors_ok=True)))
  assert (default["transformer/h/0/mlp/c_fc/kernel"].fan_in, default["transformer/h/0/mlp/c_fc/kernel"].fan_out) == (
    64,
    16,
  )
  _steps(tree, GPT2_VIEWS)


def test_bert_sequence_classification():
  # 'attention/output/dense' and 'output/dense' are hidden layers of every
  # block (the issue: they were labelled 'head').
  config = transformers.BertConfig(
    hidden_size=16,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=32,
    vocab_size=50,
    max_position_embeddings=32,
    num_labels=3,
  )
  tree = _hf_shapes(transformers.FlaxBertForSequenceClassification, config, (1, 8))
  roles = _check(
    tree,
    [
      (r"embeddings/(word|position|token_type)_embeddings/embedding$", "embedding", DN(0, 1)),
      (r"layer/\d+/attention/self/(query|key|value)/kernel$", "hidden", DN(0, 1)),
      (r"layer/\d+/attention/output/dense/kernel$", "hidden", DN(0, 1)),
      (r"layer/\d+/(intermediate|output)/dense/kernel$", "hidden", DN(0, 1)),
      (r"pooler/dense/kernel$", "hidden", DN(0, 1)),
      (r"LayerNorm/(scale|bias)$", "vector", None),
      (r"(?<!LayerNorm)/bias$", "vector", None),
      (r"^classifier/kernel$", "head", DN(0, 1)),
    ],
  )
  assert roles["bert/encoder/layer/1/output/dense/kernel"] == "hidden"
  _steps(tree)


def test_llama_causal_lm():
  # Grouped-query attention: k_proj and v_proj are (16, 8).
  config = transformers.LlamaConfig(
    hidden_size=16,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=1,
    intermediate_size=32,
    vocab_size=50,
    max_position_embeddings=32,
  )
  tree = _hf_shapes(transformers.FlaxLlamaForCausalLM, config, (1, 8))
  _check(
    tree,
    [
      (r"model/embed_tokens/embedding$", "embedding", DN(0, 1)),
      (r"layers/\d+/self_attn/(q|k|v|o)_proj/kernel$", "hidden", DN(0, 1)),
      (r"layers/\d+/mlp/(gate|up|down)_proj/kernel$", "hidden", DN(0, 1)),
      (r"(input_layernorm|post_attention_layernorm|model/norm)/weight$", "vector", None),
      (r"^lm_head/kernel$", "head", DN(0, 1)),
    ],
  )
  _steps(tree)


@pytest.fixture
def t5_clip_shim(monkeypatch):
  # transformers' Flax T5 calls jnp.clip(x, a_max=...), removed from jax 0.10;
  # the shim only renames the argument so the package's own init runs.
  clip = jnp.clip

  def compat(x, min=None, max=None, *, a_min=None, a_max=None):
    return clip(x, min if a_min is None else a_min, max if a_max is None else a_max)

  monkeypatch.setattr(jnp, "clip", compat)


def test_t5_conditional_generation(t5_clip_shim):
  config = transformers.T5Config(
    d_model=16,
    d_kv=8,
    d_ff=32,
    num_layers=2,
    num_decoder_layers=2,
    num_heads=2,
    vocab_size=50,
    tie_word_embeddings=False,
    feed_forward_proj="gated-gelu",
  )
  tree = _hf_shapes(transformers.FlaxT5ForConditionalGeneration, config, (1, 8))
  _check(
    tree,
    [
      (r"^shared/embedding$", "embedding", DN(0, 1)),
      # T5's relative position bias is an nn.Embed lookup table (buckets × heads):
      # one row of per-head biases per bucket, the fan-in of a one-hot bucket.
      (r"relative_attention_bias/embedding$", "embedding", DN(0, 1)),
      (r"(SelfAttention|EncDecAttention)/(q|k|v|o)/kernel$", "hidden", DN(0, 1)),
      (r"DenseReluDense/(wi_0|wi_1|wo)/kernel$", "hidden", DN(0, 1)),
      (r"(layer_norm|final_layer_norm)/weight$", "vector", None),
      (r"^lm_head/kernel$", "head", DN(0, 1)),
    ],
  )
  assert tree["encoder"]["block"]["0"]["layer"]["0"]["SelfAttention"]["relative_attention_bias"]["embedding"].shape == (
    32,
    2,
  )
  _steps(tree)


def test_vit_image_classification():
  # The patch projection is the model's input layer (pixels → residual
  # stream, the role of a token embedding): "embedding", AdamW under muon as
  # Muon's authors keep input layers, Spectral under Scion's image recipe
  # (its first layer); its view is the conv's (kh·kw·c_in, c_out) matrix.
  # position_embeddings (1, N, d) is a table of N positions: one (N, d) matrix.
  # cls_token (1, 1, d) is one learned vector.
  config = transformers.ViTConfig(
    hidden_size=16,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=32,
    image_size=8,
    patch_size=4,
    num_channels=3,
    num_labels=3,
  )
  tree = _hf_shapes(transformers.FlaxViTForImageClassification, config, (1, 8, 8, 3))
  _check(
    tree,
    [
      (r"embeddings/patch_embeddings/projection/kernel$", "embedding", DN((0, 1, 2), 3)),
      (r"embeddings/position_embeddings$", "embedding", DN(1, 2)),
      (r"embeddings/cls_token$", "vector", None),
      (r"layer/\d+/attention/attention/(query|key|value)/kernel$", "hidden", DN(0, 1)),
      (r"layer/\d+/attention/output/dense/kernel$", "hidden", DN(0, 1)),
      (r"layer/\d+/(intermediate|output)/dense/kernel$", "hidden", DN(0, 1)),
      (r"(layernorm|layernorm_before|layernorm_after)/(scale|bias)$", "vector", None),
      (r"(?<!layernorm)(?<!layernorm_before)(?<!layernorm_after)/bias$", "vector", None),
      (r"^classifier/kernel$", "head", DN(0, 1)),
    ],
  )
  _steps(tree, recipe="image")  # Spectral on the patch projection and the position table


def test_roberta_classification_head_is_ambiguous_and_says_so():
  # RoBERTa's head is a 2-layer MLP: classifier/dense then classifier/out_proj.
  # Neither module is named as a head, so by_role cannot know which is the
  # output layer: it warns, naming the leaves and the override to pass.
  config = transformers.RobertaConfig(
    hidden_size=16,
    num_hidden_layers=1,
    num_attention_heads=2,
    intermediate_size=32,
    vocab_size=50,
    max_position_embeddings=40,
    num_labels=3,
  )
  tree = _hf_shapes(transformers.FlaxRobertaForSequenceClassification, config, (1, 8))
  with pytest.warns(
    UserWarning, match=r"classifier/out_proj/kernel.*overrides=\{r'classifier/out_proj/kernel\$': 'head'"
  ) as record:
    roles = _roles(tree)
  assert "classifier/dense/kernel" in str(record[0].message)
  assert roles["classifier/out_proj/kernel"] == "hidden"
  fixed = functools.partial(
    labels.by_role, overrides={r"classifier/out_proj/kernel$": "head", r"classifier/dense/kernel$": "hidden"}
  )
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # the overrides settle it: no warning
    flat = jax.tree_util.tree_flatten_with_path(fixed(tree))[0]
    _steps(tree, labels_fn=fixed)
  assert {_tree.path_str(p): r for p, r in flat}["classifier/out_proj/kernel"] == "head"
  got = dict(zip(roles, views.resolve_views(None, tree, transform="test", vectors_ok=True)))
  for path, shape in (
    ("classifier/dense/kernel", (16, 16)),
    ("classifier/out_proj/kernel", (16, 3)),
    ("roberta/embeddings/word_embeddings/embedding", (50, 16)),
    ("roberta/encoder/layer/0/attention/self/query/kernel", (16, 16)),
  ):
    assert got[path] == views.make_view(shape, DN(0, 1), path), path


# Flax stacks: nn.scan (linen), nnx.vmap-created blocks applied with nnx.scan,
# and nnx.MultiHeadAttention. Stacked biases and norm scales (L, d) and
# per-head biases (heads, d_head) are vectors; kernels of any rank are hidden.
# A stacked kernel is L per-layer matrices; the arrays cannot tell it from a
# 1-D conv kernel (k, c_in, c_out), so the view is refused with the dimension
# numbers to pass, and given by path.


class _LinenBlock(nn.Module):
  @nn.compact
  def __call__(self, x, _):
    return nn.LayerNorm()(x + nn.Dense(8)(x)), None


class _LinenScanned(nn.Module):
  @nn.compact
  def __call__(self, tokens):
    x = nn.Embed(20, 8)(tokens)
    stack = nn.scan(
      _LinenBlock,
      variable_axes={"params": 0},
      split_rngs={"params": True},
      length=3,
      metadata_params={nn.PARTITION_NAME: "layers"},
    )
    x, _ = stack(name="blocks")(x, None)
    return nn.Dense(20, name="lm_head")(x)


class _NnxBlock(nnx.Module):
  def __init__(self, rngs):
    self.linear = nnx.Linear(8, 8, rngs=rngs)
    self.norm = nnx.RMSNorm(8, rngs=rngs)


class _NnxStacked(nnx.Module):
  def __init__(self, rngs):
    self.embed = nnx.Embed(20, 8, rngs=rngs)
    make = nnx.vmap(_NnxBlock, in_axes=0, out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
    self.blocks = make(rngs.split(3))
    self.attn = nnx.MultiHeadAttention(num_heads=2, in_features=8, qkv_features=8, decode=False, rngs=rngs)
    self.head = nnx.Linear(8, 20, rngs=rngs)


class _NnxScanBlock(nnx.Module):
  """A pre-norm transformer block: attention and an MLP."""

  def __init__(self, rngs):
    self.norm = nnx.LayerNorm(8, rngs=rngs)
    self.attn = nnx.MultiHeadAttention(num_heads=2, in_features=8, qkv_features=8, decode=False, rngs=rngs)
    self.mlp = nnx.Linear(8, 16, rngs=rngs)
    self.proj = nnx.Linear(16, 8, rngs=rngs)

  def __call__(self, x):
    x = x + self.attn(self.norm(x))
    return x + self.proj(jax.nn.gelu(self.mlp(x)))


class _NnxScanned(nnx.Module):
  """Three blocks made by nnx.vmap and run by nnx.scan (the nnx scan-over-layers idiom)."""

  def __init__(self, rngs):
    self.embed = nnx.Embed(20, 8, rngs=rngs)

    @nnx.split_rngs(splits=3)
    @nnx.vmap(in_axes=(0,), out_axes=0)
    def make(rngs):
      return _NnxScanBlock(rngs)

    self.blocks = make(rngs)
    self.lm_head = nnx.Linear(8, 20, rngs=rngs)

  def __call__(self, tokens):
    @nnx.scan(in_axes=(0, nnx.Carry), out_axes=nnx.Carry)
    def forward(block, x):
      return block(x)

    return self.lm_head(forward(self.blocks, self.embed(tokens)))


def _refused(tree, leaf_path, dn):
  """The inferred view of ``leaf_path`` is refused, naming ``dn`` to pass."""
  leaf = dict(zip(_roles(tree), jax.tree.leaves(tree)))[leaf_path]
  path = next(p for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0] if _tree.path_str(p) == leaf_path)
  with pytest.raises(ValueError, match=re.escape(views._dn_text(dn))):
    views.infer_dimension_numbers(path, tuple(leaf.shape))


def test_linen_scan_stack():
  tree = nn.meta.unbox(jax.eval_shape(lambda: _LinenScanned().init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))))
  stacked = matopt.dimension_numbers_by_path({r"blocks/Dense_0/kernel$": DN(1, 2)})
  roles = _check(
    tree,
    [
      (r"Embed_0/embedding$", "embedding", DN(0, 1)),
      (r"blocks/Dense_0/kernel$", "hidden", DN(1, 2)),  # 3 layers of (8, 8)
      (r"blocks/(Dense_0|LayerNorm_0)/bias$", "vector", None),
      (r"blocks/LayerNorm_0/scale$", "vector", None),
      (r"lm_head/kernel$", "head", DN(0, 1)),
      (r"lm_head/bias$", "vector", None),
    ],
    stacked,
  )
  assert roles["params/blocks/LayerNorm_0/scale"] == "vector"
  _refused(tree, "params/blocks/Dense_0/kernel", DN(1, 2))
  _steps(tree, stacked)


def test_nnx_vmap_stack_and_multi_head_attention():
  state = nnx.state(nnx.eval_shape(lambda: _NnxStacked(nnx.Rngs(0))), nnx.Param)
  assert state["blocks"]["norm"]["scale"].shape == (3, 8) and state["attn"]["query"]["bias"].shape == (2, 4)
  stacked = matopt.dimension_numbers_by_path({r"^blocks/linear/kernel$": DN(1, 2)})
  expected = [
    (r"^embed/embedding$", "embedding", DN(0, 1)),
    (r"^blocks/linear/kernel$", "hidden", DN(1, 2)),
    (r"^blocks/(linear/bias|norm/scale)$", "vector", None),
    # (d, heads, d_head) and (heads, d_head, d): the Dense matrices (d, heads·d_head) and (heads·d_head, d).
    (r"^attn/(query|key|value)/kernel$", "hidden", DN(0, (1, 2))),
    (r"^attn/out/kernel$", "hidden", DN((0, 1), 2)),
    (r"^attn/(query|key|value|out)/bias$", "vector", None),
    (r"^head/kernel$", "head", DN(0, 1)),
    (r"^head/bias$", "vector", None),
  ]
  _check(state, expected, stacked)  # nnx.State of Variables, as nnx.Optimizer gives tx.init
  tree = nnx.to_pure_dict(state)  # bare arrays, as tx.update gets them
  _check(tree, expected, stacked)
  _refused(tree, "blocks/linear/kernel", DN(1, 2))
  _steps(tree, stacked)


def test_nnx_scan_stack():
  model = nnx.eval_shape(lambda: _NnxScanned(nnx.Rngs(0)))
  # The stacked blocks run under nnx.scan (traced only).
  graphdef, params = nnx.split(model)
  logits = jax.eval_shape(lambda p, t: nnx.merge(graphdef, p)(t), params, jnp.zeros((2, 4), jnp.int32))
  assert logits.shape == (2, 4, 20)
  tree = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  assert tree["blocks"]["attn"]["query"]["kernel"].shape == (3, 8, 2, 4)
  stacked = matopt.dimension_numbers_by_path(
    {
      r"^blocks/attn/(query|key|value)/kernel$": DN(1, (2, 3)),
      r"^blocks/attn/out/kernel$": DN((1, 2), 3),
      r"^blocks/(mlp|proj)/kernel$": DN(1, 2),
    }
  )
  _check(
    tree,
    [
      (r"^embed/embedding$", "embedding", DN(0, 1)),
      # 3 layers of (d, heads·d_head) = (8, 8), and of (8, 8) for the output projection.
      (r"^blocks/attn/(query|key|value)/kernel$", "hidden", DN(1, (2, 3))),
      (r"^blocks/attn/out/kernel$", "hidden", DN((1, 2), 3)),
      (r"^blocks/(mlp|proj)/kernel$", "hidden", DN(1, 2)),  # 3 × (8, 16) and 3 × (16, 8)
      (r"^blocks/attn/(query|key|value|out)/bias$", "vector", None),  # (3, heads, d_head), (3, d)
      (r"^blocks/(mlp|proj)/bias$", "vector", None),
      (r"^blocks/norm/(scale|bias)$", "vector", None),
      (r"^lm_head/kernel$", "head", DN(0, 1)),
      (r"^lm_head/bias$", "vector", None),
    ],
    stacked,
  )
  _refused(tree, "blocks/attn/query/kernel", DN(1, (2, 3)))
  _refused(tree, "blocks/attn/out/kernel", DN((1, 2), 3))
  _refused(tree, "blocks/mlp/kernel", DN(1, 2))
  _steps(tree, stacked)


def test_generic_output_word_is_head_only_at_the_root():
  # Meta's Llama names its head 'output' at the top of the model; inside a
  # block the same word is an ordinary layer.
  rng = np.random.default_rng(0)
  params = {
    "params": {
      "tok_embeddings": {"embedding": jnp.asarray(rng.standard_normal((20, 8)))},
      "layers_0": {"output": {"kernel": jnp.asarray(rng.standard_normal((8, 8)))}},
      "output": {"kernel": jnp.asarray(rng.standard_normal((8, 20)))},
    }
  }
  assert _roles(params) == {
    "params/tok_embeddings/embedding": "embedding",
    "params/layers_0/output/kernel": "hidden",
    "params/output/kernel": "head",
  }


def test_muon_on_bert_sends_block_output_layers_to_muon():
  # End to end: the block output kernel gets Muon's orthogonalised step, not AdamW's.
  config = transformers.BertConfig(
    hidden_size=16,
    num_hidden_layers=1,
    num_attention_heads=2,
    intermediate_size=32,
    vocab_size=30,
    max_position_embeddings=16,
    num_labels=3,
  )
  shapes = _hf_shapes(transformers.FlaxBertForSequenceClassification, config, (1, 4))
  rng = np.random.default_rng(1)  # numpy: no random-kernel compile per leaf shape
  params = jax.tree.map(lambda s: jnp.asarray(rng.standard_normal(s.shape), s.dtype), shapes)
  grads = jax.tree.map(lambda p: jnp.asarray(rng.standard_normal(p.shape), p.dtype), params)
  tx = matopt.muon(1.0, momentum=0.0, nesterov=False, scale="none")
  updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  path = ("bert", "encoder", "layer", "0", "output", "dense", "kernel")
  u, g = updates, grads
  for k in path:
    u, g = u[k], g[k]
  np.testing.assert_allclose(-u, matopt.msign(g), atol=1e-5)
