"""Default matrix views of stacked and multi-head leaves; axis range checks.

What optax transforms receive (flax 0.12.8): ``nnx.Optimizer`` calls
``tx.init(nnx.state(model, wrt))`` with ``nnx.Param`` Variables as leaves but
``tx.update`` with ``nnx.as_pure`` raw arrays, so a default view is decided
from each leaf's path and shape, which both calls see alike.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import matopt
from matopt.transforms import views

_STACK_MESSAGE = r"DimensionNumbers\(reduction_axis=1, output_axis=2\)"


def _normal(key, shape):
  return jax.random.normal(jax.random.key(key), shape, jnp.float32)


# Item 6: axes out of range are an error naming the leaf, never wrapped.


@pytest.mark.parametrize(
  "dn", [views.DimensionNumbers(1, 2), views.DimensionNumbers(0, -3), views.DimensionNumbers((0, 5), 1)]
)
def test_out_of_range_axes_name_the_leaf(dn):
  with pytest.raises(ValueError, match=r"'blocks/w'.*\(3, 4\).*out of range for ndim 2"):
    views.make_view((3, 4), dn, "blocks/w")
  tx = matopt.scale_by_msign(dimension_numbers=dn)
  with pytest.raises(ValueError, match=r"'blocks/w'"):
    tx.init({"blocks": {"w": _normal(0, (3, 4))}})


def test_negative_axes_index_like_python():
  x = _normal(1, (5, 4, 6))
  view = views.make_view(x.shape, views.DimensionNumbers(-2, -1), "w")
  assert (view.reduction_axes, view.output_axes) == ((1,), (2,))
  np.testing.assert_array_equal(view.to_matrices(x), x)


# Item 3: vectors of rank 2, per-head attention kernels, stacked kernels.


class _Block(nnx.Module):
  def __init__(self, rngs):
    self.linear = nnx.Linear(8, 8, rngs=rngs)
    self.norm = nnx.LayerNorm(8, rngs=rngs)

  def __call__(self, x):
    return self.norm(x + jax.nn.gelu(self.linear(x)))


class _Model(nnx.Module):
  """Embedding, nnx.MultiHeadAttention, and (``stacked``) three blocks made
  by nnx.vmap and applied by nnx.scan, then a head."""

  def __init__(self, rngs, *, stacked=True):
    self.embed = nnx.Embed(16, 8, rngs=rngs)
    self.attn = nnx.MultiHeadAttention(num_heads=2, in_features=8, qkv_features=8, decode=False, rngs=rngs)
    make = nnx.vmap(_Block, in_axes=0, out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
    self.blocks = make(rngs.split(3)) if stacked else None
    self.head = nnx.Linear(8, 16, rngs=rngs)

  def __call__(self, tokens):
    @nnx.scan(in_axes=(0, nnx.Carry), out_axes=nnx.Carry, transform_metadata={nnx.PARTITION_NAME: "layers"})
    def body(block, x):
      return block(x)

    x = self.attn(self.embed(tokens))
    return self.head(x if self.blocks is None else body(self.blocks, x))


def _loss(model, tokens):
  logits = model(tokens)
  return optax.softmax_cross_entropy_with_integer_labels(logits, jnp.roll(tokens, 1, axis=1)).mean()


def _tokens():
  return jax.random.randint(jax.random.key(5), (4, 6), 0, 16)


def test_rank_two_vectors_have_no_matrix_view():
  tree = {
    "attn": {"query": {"bias": _normal(0, (2, 4))}},
    "blocks": {"norm": {"scale": _normal(1, (3, 8))}, "ln": {"weight": _normal(2, (3, 8))}},
  }
  assert views.resolve_views(None, tree, transform="t", vectors_ok=True) == [None, None, None]
  with pytest.raises(ValueError, match=r"leaf 'attn/query/bias' has shape \(2, 4\).*a vector"):
    views.resolve_views(None, tree, transform="scale_by_msign")


def test_multi_head_attention_kernels_are_their_dense_matrices():
  # nnx.MultiHeadAttention: query/key/value (d, heads, d_head) are the
  # (d, heads·d_head) matrix of the equivalent Dense, out (heads, d_head, d)
  # the (heads·d_head, d) one.
  q, out = _normal(0, (8, 2, 4)), _normal(1, (2, 4, 8))
  tree = {"attn": {"query": {"kernel": q}, "out": {"kernel": out}}}
  got, _ = matopt.scale_by_msign(method="svd").update(tree, optax.EmptyState())
  np.testing.assert_allclose(
    got["attn"]["query"]["kernel"], matopt.msign(q.reshape(8, 8), method="svd").reshape(8, 2, 4), atol=1e-5
  )
  np.testing.assert_allclose(
    got["attn"]["out"]["kernel"], matopt.msign(out.reshape(8, 8), method="svd").reshape(2, 4, 8), atol=1e-5
  )


def test_stacked_kernel_is_refused_with_the_view_to_pass():
  tree = {"blocks": {"linear": {"kernel": _normal(0, (3, 8, 6))}}}
  with pytest.raises(ValueError, match=r"'blocks/linear/kernel' of shape \(3, 8, 6\).*" + _STACK_MESSAGE):
    matopt.scale_by_msign().init(tree)
  # The advice works: a stack of three (8, 6) matrices, each orthogonalised.
  dn = views.dimension_numbers_by_path({r"blocks/.*/kernel$": matopt.DimensionNumbers(1, 2)})
  tx = matopt.scale_by_msign(dimension_numbers=dn, method="svd")
  got, _ = tx.update(tree, tx.init(tree))
  w = tree["blocks"]["linear"]["kernel"]
  for i in range(3):
    np.testing.assert_allclose(got["blocks"]["linear"]["kernel"][i], matopt.msign(w[i], method="svd"), atol=1e-5)


def test_refusal_shows_the_axis_names_the_model_library_recorded():
  from flax import linen as nn

  w = _normal(0, (3, 8, 6))
  boxed = {"blocks": {"kernel": nn.Partitioned(w, names=("layers", "embed", "mlp"))}}
  with nnx.use_eager_sharding(False):
    variable = {"blocks": {"kernel": nnx.Param(w, out_sharding=("layers", "embed", "mlp"))}}
  for tree in (boxed, variable):
    with pytest.raises(ValueError, match=_STACK_MESSAGE + r".*names its axes \('layers', 'embed', 'mlp'\)"):
      matopt.scale_by_msign().init(tree)


def test_stacked_attention_kernel_is_refused():
  tree = {"blocks": {"attn": {"query": {"kernel": _normal(0, (3, 8, 2, 4))}}}}
  with pytest.raises(
    ValueError, match=r"'blocks/attn/query/kernel'.*DimensionNumbers\(reduction_axis=1, output_axis=\(2, 3\)\)"
  ):
    matopt.scale_by_msign().init(tree)


@pytest.fixture
def standard_promotion():
  # Full optimizers include optax's Adam, which is not strict-promotion clean
  # (as tests/conftest.py notes for tests/optimizers).
  with jax.numpy_dtype_promotion("standard"):
    yield


_OPTIMIZERS = {
  "muon": lambda **kw: matopt.muon(0.02, **kw),
  "scion": lambda **kw: matopt.scion(2.0**-12, **kw),
  "shampoo": lambda **kw: matopt.shampoo(0.01, **kw),
  "soap": lambda **kw: matopt.soap(0.01, **kw),
}


def _advice():
  return views.dimension_numbers_by_path({r"^blocks/linear/kernel$": matopt.DimensionNumbers(1, 2)})


def _trains(model, tx):
  opt = nnx.Optimizer(model, tx, wrt=nnx.Param)
  step = nnx.jit(lambda model, opt, tokens: opt.update(model, nnx.grad(_loss)(model, tokens)))
  tokens = _tokens()
  before = float(_loss(model, tokens))
  for _ in range(3):
    step(model, opt, tokens)
  return float(_loss(model, tokens)) < before


@pytest.mark.parametrize("name", sorted(_OPTIMIZERS))
def test_stacked_nnx_model_raises_at_init(name, standard_promotion):
  model = _Model(nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"'blocks/linear/kernel' of shape \(3, 8, 8\).*" + _STACK_MESSAGE):
    nnx.Optimizer(model, _OPTIMIZERS[name](), wrt=nnx.Param)


@pytest.mark.parametrize("name", ["muon", "shampoo", "soap"])
def test_stacked_attention_model_trains_with_the_advised_view(name, standard_promotion):
  assert _trains(_Model(nnx.Rngs(0)), _OPTIMIZERS[name](dimension_numbers=_advice()))


def test_scion_trains_multi_head_attention(standard_promotion):
  # Scion takes no dimension_numbers: the attention kernels' default views.
  assert _trains(_Model(nnx.Rngs(0), stacked=False), _OPTIMIZERS["scion"]())


def test_muon_on_stacked_model_orthogonalises_each_layer(standard_promotion):
  model = _Model(nnx.Rngs(0))
  tx = matopt.muon(1.0, momentum=0.0, nesterov=False, scale="none", dimension_numbers=_advice())
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  grads = jax.tree.map(lambda p: jax.random.normal(jax.random.key(p.size), p.shape), params)
  updates, _ = tx.update(grads, tx.init(params), params)
  g = grads["blocks"]["linear"]["kernel"]
  for i in range(3):
    np.testing.assert_allclose(-updates["blocks"]["linear"]["kernel"][i], matopt.msign(g[i]), atol=1e-5)
  q = grads["attn"]["query"]["kernel"]  # (d, heads, d_head): msign of the (d, heads·d_head) matrix
  np.testing.assert_allclose(
    -updates["attn"]["query"]["kernel"], matopt.msign(q.reshape(8, 8)).reshape(q.shape), atol=1e-5
  )
  # Stacked norm scales and per-head biases go to AdamW, whose first step has
  # the same magnitude in every entry (no orthogonalisation).
  for u in (updates["blocks"]["norm"]["scale"], updates["attn"]["query"]["bias"]):
    np.testing.assert_allclose(jnp.abs(u), jnp.abs(u).max(), rtol=1e-3)


def test_dimension_numbers_by_path_checks_its_rules():
  with pytest.raises(ValueError, match=r"not a valid regex"):
    views.dimension_numbers_by_path({"(": matopt.DimensionNumbers(1, 2)})
  with pytest.raises(ValueError, match=r"'kernel' maps to \(1, 2\)"):
    views.dimension_numbers_by_path({"kernel": (1, 2)})


# The HF GPT-2 Conv1D layout (README): kernels are (fan_out, fan_in).


def test_hf_gpt2_conv1d_view():
  pytest.importorskip("transformers", reason="the dev extra installs transformers<5")
  from transformers.models.gpt2.modeling_flax_gpt2 import FlaxConv1D

  x = _normal(3, (2, 5))
  layer = FlaxConv1D(features=12)
  with jax.numpy_rank_promotion("allow"):
    params = layer.init(jax.random.key(0), x)["params"]
    y = layer.apply({"params": params}, x)
    kernel = params["kernel"]
    assert kernel.shape == (12, 5)  # (fan_out, fan_in): y = x @ kernel.T + bias
    np.testing.assert_allclose(y, x @ kernel.T + params["bias"], rtol=1e-5, atol=1e-5)
  g = _normal(4, (12, 5))  # a gradient in the same layout
  dn = matopt.DimensionNumbers(reduction_axis=1, output_axis=0)
  tx = matopt.scale_by_msign(dimension_numbers=dn)
  got, _ = tx.update({"c_attn": {"kernel": g}}, tx.init({"c_attn": {"kernel": g}}))
  np.testing.assert_allclose(got["c_attn"]["kernel"], matopt.msign(g.T).T, atol=1e-5)
  # The shape factor sees fan_in 5, fan_out 12: √(12/5), not 1.
  scaled, _ = matopt.scale_by_shape(dimension_numbers=dn).update({"w": g}, None)
  np.testing.assert_allclose(scaled["w"], g * np.sqrt(12 / 5), rtol=1e-6)
  # A fused c_attn (d, 3d)ᵀ split into Q, K, V: each block is its own matrix.
  split = matopt.DimensionNumbers(reduction_axis=1, output_axis=0, output_split=3)
  got, _ = matopt.scale_by_msign(dimension_numbers=split).update({"w": g}, optax.EmptyState())
  for b in range(3):
    np.testing.assert_allclose(got["w"][4 * b : 4 * (b + 1)], matopt.msign(g[4 * b : 4 * (b + 1)].T).T, atol=1e-5)
