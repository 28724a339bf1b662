"""by_role on real model trees: Hugging Face Flax models and Flax scan/vmap stacks.

Trees are built from the packages' own init code with tiny configs and random
init (shapes only, through ``jax.eval_shape``): no weights are downloaded.
Each model lists the role an expert gives every kind of leaf; every leaf must
match exactly one kind, so a leaf the test did not think about fails it.
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


def _check(tree, expected):
  """Every leaf matches exactly one ``(regex, role)`` kind, and has that role."""
  roles = _roles(tree)
  for path, role in roles.items():
    kinds = [(pattern, want) for pattern, want in expected if re.search(pattern, path)]
    assert len(kinds) == 1, f"{path}: matched {kinds}"
    assert role == kinds[0][1], f"{path}: labelled {role!r}, an expert says {kinds[0][1]!r}"
  for pattern, _ in expected:  # every kind listed is present in the tree
    assert any(re.search(pattern, path) for path in roles), pattern
  return roles


def test_gpt2_lm_head_model():
  # The LM head is tied to wte: there is no head leaf to find.
  config = transformers.GPT2Config(n_embd=16, n_layer=2, n_head=2, vocab_size=50, n_positions=32)
  tree = _hf_shapes(transformers.FlaxGPT2LMHeadModel, config, (1, 8))
  _check(tree, [
      (r"transformer/(wte|wpe)/embedding$", "embedding"),
      (r"h/\d+/(attn/c_attn|attn/c_proj|mlp/c_fc|mlp/c_proj)/kernel$", "hidden"),
      (r"/bias$", "vector"),
      (r"(ln_\d|ln_f)/scale$", "vector"),
  ])


def test_bert_sequence_classification():
  # 'attention/output/dense' and 'output/dense' are hidden layers of every
  # block (the issue: they were labelled 'head').
  config = transformers.BertConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                   intermediate_size=32, vocab_size=50, max_position_embeddings=32,
                                   num_labels=3)
  tree = _hf_shapes(transformers.FlaxBertForSequenceClassification, config, (1, 8))
  roles = _check(tree, [
      (r"embeddings/(word|position|token_type)_embeddings/embedding$", "embedding"),
      (r"layer/\d+/attention/self/(query|key|value)/kernel$", "hidden"),
      (r"layer/\d+/attention/output/dense/kernel$", "hidden"),
      (r"layer/\d+/(intermediate|output)/dense/kernel$", "hidden"),
      (r"pooler/dense/kernel$", "hidden"),
      (r"LayerNorm/(scale|bias)$", "vector"),
      (r"(?<!LayerNorm)/bias$", "vector"),
      (r"^classifier/kernel$", "head"),
  ])
  assert roles["bert/encoder/layer/1/output/dense/kernel"] == "hidden"


def test_llama_causal_lm():
  config = transformers.LlamaConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                    num_key_value_heads=1, intermediate_size=32, vocab_size=50,
                                    max_position_embeddings=32)
  tree = _hf_shapes(transformers.FlaxLlamaForCausalLM, config, (1, 8))
  _check(tree, [
      (r"model/embed_tokens/embedding$", "embedding"),
      (r"layers/\d+/self_attn/(q|k|v|o)_proj/kernel$", "hidden"),
      (r"layers/\d+/mlp/(gate|up|down)_proj/kernel$", "hidden"),
      (r"(input_layernorm|post_attention_layernorm|model/norm)/weight$", "vector"),
      (r"^lm_head/kernel$", "head"),
  ])


@pytest.fixture
def t5_clip_shim(monkeypatch):
  # transformers' Flax T5 calls jnp.clip(x, a_max=...), removed from jax 0.10;
  # the shim only renames the argument so the package's own init runs.
  clip = jnp.clip

  def compat(x, min=None, max=None, *, a_min=None, a_max=None):
    return clip(x, min if a_min is None else a_min, max if a_max is None else a_max)

  monkeypatch.setattr(jnp, "clip", compat)


def test_t5_conditional_generation(t5_clip_shim):
  config = transformers.T5Config(d_model=16, d_kv=8, d_ff=32, num_layers=2, num_decoder_layers=2,
                                 num_heads=2, vocab_size=50, tie_word_embeddings=False,
                                 feed_forward_proj="gated-gelu")
  tree = _hf_shapes(transformers.FlaxT5ForConditionalGeneration, config, (1, 8))
  _check(tree, [
      (r"^shared/embedding$", "embedding"),
      # T5's relative position bias is an nn.Embed lookup table (buckets × heads).
      (r"relative_attention_bias/embedding$", "embedding"),
      (r"(SelfAttention|EncDecAttention)/(q|k|v|o)/kernel$", "hidden"),
      (r"DenseReluDense/(wi_0|wi_1|wo)/kernel$", "hidden"),
      (r"(layer_norm|final_layer_norm)/weight$", "vector"),
      (r"^lm_head/kernel$", "head"),
  ])


def test_vit_image_classification():
  # The patch projection is the model's input layer (pixels → residual
  # stream, the role of a token embedding): "embedding", AdamW under muon as
  # Muon's authors keep input layers, Spectral under Scion's image recipe
  # (its first layer). cls_token (1, 1, d) is one learned vector.
  config = transformers.ViTConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=32, image_size=8, patch_size=4, num_channels=3,
                                  num_labels=3)
  tree = _hf_shapes(transformers.FlaxViTForImageClassification, config, (1, 8, 8, 3))
  _check(tree, [
      (r"embeddings/patch_embeddings/projection/kernel$", "embedding"),
      (r"embeddings/position_embeddings$", "embedding"),
      (r"embeddings/cls_token$", "vector"),
      (r"layer/\d+/attention/attention/(query|key|value)/kernel$", "hidden"),
      (r"layer/\d+/attention/output/dense/kernel$", "hidden"),
      (r"layer/\d+/(intermediate|output)/dense/kernel$", "hidden"),
      (r"(layernorm|layernorm_before|layernorm_after)/(scale|bias)$", "vector"),
      (r"(?<!layernorm)(?<!layernorm_before)(?<!layernorm_after)/bias$", "vector"),
      (r"^classifier/kernel$", "head"),
  ])


def test_roberta_classification_head_is_ambiguous_and_says_so():
  # RoBERTa's head is a 2-layer MLP: classifier/dense then classifier/out_proj.
  # Neither module is named as a head, so by_role cannot know which is the
  # output layer: it warns, naming the leaves and the override to pass.
  config = transformers.RobertaConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                      intermediate_size=32, vocab_size=50, max_position_embeddings=40,
                                      num_labels=3)
  tree = _hf_shapes(transformers.FlaxRobertaForSequenceClassification, config, (1, 8))
  with pytest.warns(UserWarning, match=r"classifier/out_proj/kernel.*overrides=\{r'classifier/out_proj/kernel\$': 'head'") as record:
    roles = _roles(tree)
  assert "classifier/dense/kernel" in str(record[0].message)
  assert roles["classifier/out_proj/kernel"] == "hidden"
  fixed = functools.partial(labels.by_role, overrides={r"classifier/out_proj/kernel$": "head",
                                                       r"classifier/dense/kernel$": "hidden"})
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # the overrides settle it: no warning
    flat = jax.tree_util.tree_flatten_with_path(fixed(tree))[0]
  assert {_tree.path_str(p): r for p, r in flat}["classifier/out_proj/kernel"] == "head"


# Flax stacks: nn.scan (linen), nnx.vmap-created / nnx.scan-applied blocks and
# nnx.MultiHeadAttention. Stacked biases and norm scales (L, d) and per-head
# biases (heads, d_head) are vectors; kernels of any rank are hidden.

class _LinenBlock(nn.Module):
  @nn.compact
  def __call__(self, x, _):
    return nn.LayerNorm()(x + nn.Dense(8)(x)), None


class _LinenScanned(nn.Module):
  @nn.compact
  def __call__(self, tokens):
    x = nn.Embed(20, 8)(tokens)
    stack = nn.scan(_LinenBlock, variable_axes={"params": 0}, split_rngs={"params": True}, length=3,
                    metadata_params={nn.PARTITION_NAME: "layers"})
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


def test_linen_scan_stack():
  params = _LinenScanned().init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
  roles = _check(nn.meta.unbox(params), [
      (r"Embed_0/embedding$", "embedding"),
      (r"blocks/Dense_0/kernel$", "hidden"),
      (r"blocks/(Dense_0|LayerNorm_0)/bias$", "vector"),
      (r"blocks/LayerNorm_0/scale$", "vector"),
      (r"lm_head/kernel$", "head"),
      (r"lm_head/bias$", "vector"),
  ])
  assert roles["params/blocks/LayerNorm_0/scale"] == "vector"


def test_nnx_vmap_stack_and_multi_head_attention():
  state = nnx.state(_NnxStacked(nnx.Rngs(0)), nnx.Param)
  assert state["blocks"]["norm"]["scale"].shape == (3, 8) and state["attn"]["query"]["bias"].shape == (2, 4)
  _check(state, [
      (r"^embed/embedding$", "embedding"),
      (r"^blocks/linear/kernel$", "hidden"),
      (r"^blocks/(linear/bias|norm/scale)$", "vector"),
      (r"^attn/(query|key|value|out)/kernel$", "hidden"),
      (r"^attn/(query|key|value|out)/bias$", "vector"),
      (r"^head/kernel$", "head"),
      (r"^head/bias$", "vector"),
  ])


def test_generic_output_word_is_head_only_at_the_root():
  # Meta's Llama names its head 'output' at the top of the model; inside a
  # block the same word is an ordinary layer.
  rng = np.random.default_rng(0)
  params = {"params": {"tok_embeddings": {"embedding": jnp.asarray(rng.standard_normal((20, 8)))},
                       "layers_0": {"output": {"kernel": jnp.asarray(rng.standard_normal((8, 8)))}},
                       "output": {"kernel": jnp.asarray(rng.standard_normal((8, 20)))}}}
  assert _roles(params) == {"params/tok_embeddings/embedding": "embedding",
                            "params/layers_0/output/kernel": "hidden", "params/output/kernel": "head"}


def test_muon_on_bert_sends_block_output_layers_to_muon():
  # End to end: the block output kernel gets Muon's orthogonalised step, not AdamW's.
  config = transformers.BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                   intermediate_size=32, vocab_size=30, max_position_embeddings=16,
                                   num_labels=3)
  shapes = _hf_shapes(transformers.FlaxBertForSequenceClassification, config, (1, 4))
  keys = iter(jax.random.split(jax.random.key(1), 64))
  params = jax.tree.map(lambda s: jax.random.normal(next(keys), s.shape, s.dtype), shapes)
  grads = jax.tree.map(lambda p: jax.random.normal(next(keys), p.shape, p.dtype), params)
  tx = matopt.muon(1.0, momentum=0.0, nesterov=False, scale="none")
  updates, _ = tx.update(grads, tx.init(params), params)
  path = ("bert", "encoder", "layer", "0", "output", "dense", "kernel")
  u, g = updates, grads
  for k in path:
    u, g = u[k], g[k]
  np.testing.assert_allclose(-u, matopt.msign(g), atol=1e-5)
