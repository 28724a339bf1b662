"""by_role on linen dicts and nnx State, overrides, recipes."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import nnx

import matopt
from matopt import labels


class LinenLM(nn.Module):
  @nn.compact
  def __call__(self, tokens):
    x = nn.Embed(32, 16)(tokens)
    x = nn.LayerNorm()(x)
    x = nn.Dense(16)(x)
    return nn.Dense(32, name="lm_head")(x)


class NnxLM(nnx.Module):
  def __init__(self, rngs):
    self.wte = nnx.Embed(32, 16, rngs=rngs)
    self.norm = nnx.LayerNorm(16, rngs=rngs)
    self.mlp = nnx.Linear(16, 16, rngs=rngs)
    self.conv = nnx.Conv(4, 8, kernel_size=(3, 3), rngs=rngs)
    self.classifier = nnx.Linear(16, 32, rngs=rngs)


def test_linen_roles():
  params = LinenLM().init(jax.random.key(0), jnp.zeros((2, 3), jnp.int32))
  roles = labels.by_role(params)["params"]
  assert roles["Embed_0"]["embedding"] == "embedding"
  assert roles["LayerNorm_0"] == {"scale": "vector", "bias": "vector"}
  assert roles["Dense_0"] == {"kernel": "hidden", "bias": "vector"}
  assert roles["lm_head"]["kernel"] == "head"


def test_nnx_roles():
  state = nnx.state(NnxLM(nnx.Rngs(0)), nnx.Param)
  roles = labels.by_role(state)
  by_path = {matopt._tree.path_str(p): v for p, v in jax.tree_util.tree_flatten_with_path(roles)[0]}
  assert by_path["wte/embedding"] == "embedding"
  assert by_path["mlp/kernel"] == "hidden" and by_path["mlp/bias"] == "vector"
  assert by_path["conv/kernel"] == "hidden"
  assert by_path["classifier/kernel"] == "head"
  assert by_path["norm/scale"] == "vector"
  assert len(by_path) == 9


def test_overrides_win_and_are_checked():
  params = {"pos_embedding": jnp.ones((8, 4)), "block": {"kernel": jnp.ones((4, 4))}}
  assert labels.by_role(params)["pos_embedding"] == "embedding"
  fn = functools.partial(labels.by_role, overrides={r"^pos_": "vector", r"block/kernel$": "head"})
  assert fn(params) == {"pos_embedding": "vector", "block": {"kernel": "head"}}
  with pytest.raises(ValueError, match=r"Override 'x' -> 'bias': unknown role; valid roles are"):
    labels.by_role(params, overrides={"x": "bias"})
  with pytest.raises(ValueError, match="not a valid regex"):
    labels.by_role(params, overrides={"(": "hidden"})


def test_words_not_substrings():
  # "output" marks a head but "out_proj" (attention output) is hidden;
  # "tokenizer" is not "tok".
  params = {"attn": {"out_proj": jnp.ones((4, 4))}, "tokenizer_mix": jnp.ones((4, 4)), "output": jnp.ones((4, 4))}
  assert labels.by_role(params) == {"attn": {"out_proj": "hidden"}, "tokenizer_mix": "hidden", "output": "head"}


def test_recipes():
  assert labels.scion_recipe("language") == {
    "embedding": "colnorm",
    "hidden": "spectral",
    "head": "sign",
    "vector": "colnorm",
  }
  assert labels.scion_recipe("image")["embedding"] == "spectral"
  with pytest.raises(ValueError, match=r"Unknown Scion recipe 'audio'; valid recipes are"):
    labels.scion_recipe("audio")


def test_override_naming_a_module_leaves_its_vectors_alone():
  # Relabelling a whole module must not send its bias to a matrix-only role.
  params = {"blocks": {"attn": {"kernel": jnp.ones((4, 4)), "bias": jnp.ones(4)}}, "temp": jnp.ones(())}
  labels = matopt.labels.by_role(params, overrides={"attn": "head", "temp": "hidden"})
  assert labels == {"blocks": {"attn": {"kernel": "head", "bias": "vector"}}, "temp": "vector"}
  tx = matopt.muon(0.02, labels=functools.partial(matopt.labels.by_role, overrides={"attn": "hidden"}))
  updates, _ = tx.update(params, tx.init(params), params)  # the bias goes to AdamW, no error
  assert np.all(np.isfinite(np.asarray(updates["blocks"]["attn"]["bias"])))


def test_mixer_token_mixing_layers_are_hidden():
  # MLP-Mixer (Tolstikhin et al. 2021): the token-mixing MLP's Dense layers
  # live under ``token_mixing``; a short embedding word on an ancestor must
  # not make them embeddings, while an owner named ``tok`` still is one.
  params = {
    "MixerBlock_0": {"token_mixing": {"Dense_0": {"kernel": jnp.ones((16, 32)), "bias": jnp.ones(32)}}},
    "stem": {"kernel": jnp.ones((4, 4, 3, 8))},
    "tok": {"embedding": jnp.ones((10, 8))},
    "patch_embeddings": {"projection": {"kernel": jnp.ones((2, 2, 3, 8))}},
  }
  labels = matopt.labels.by_role(params)
  assert labels["MixerBlock_0"]["token_mixing"]["Dense_0"] == {"kernel": "hidden", "bias": "vector"}
  assert labels["tok"]["embedding"] == "embedding"
  assert labels["patch_embeddings"]["projection"]["kernel"] == "embedding"
  assert labels["stem"]["kernel"] == "hidden"
