"""Matrix views of leaves: dimension numbers, defaults and round trips."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from optax.contrib import MuonDimensionNumbers

import matopt
from matopt.transforms import views


@pytest.mark.parametrize(
  "shape, dn, expected",
  [
    ((4, 6), None, (1, 4, 6)),
    ((3, 3, 8, 16), None, (1, 72, 16)),  # conv kernel: (kh·kw·c_in, c_out)
    ((5, 4, 6), views.DimensionNumbers(1, 2), (5, 4, 6)),  # stacked layers
    ((5, 4, 6), MuonDimensionNumbers(reduction_axis=1, output_axis=2), (5, 4, 6)),
    ((4, 2, 6), views.DimensionNumbers(0, (1, 2)), (1, 4, 12)),
    ((7,), views.DimensionNumbers((), 0), (1, 1, 7)),  # bias as a (1, n) row
    ((), views.DimensionNumbers((), ()), (1, 1, 1)),
  ],
)
def test_view_shapes_and_round_trip(shape, dn, expected):
  x = jnp.arange(int(np.prod(shape)), dtype=jnp.float32).reshape(shape)
  dn = views.default_dimension_numbers(len(shape)) if dn is None else dn
  view = views.make_view(shape, dn, "leaf")
  m = view.to_matrices(x)
  assert m.shape == expected
  np.testing.assert_array_equal(view.from_matrices(m), x)


def test_stacked_view_puts_batch_first():
  x = jnp.asarray(np.random.default_rng(0).standard_normal((4, 5, 3)), jnp.float32)  # (in, L, out)
  view = views.make_view(x.shape, views.DimensionNumbers(0, 2), "leaf")
  m = view.to_matrices(x)
  np.testing.assert_array_equal(m[1], x[:, 1, :])


def test_resolve_views_names_vector_leaf():
  tree = {"layer": {"kernel": jnp.ones((3, 4)), "bias": jnp.ones(4)}}
  with pytest.raises(
    ValueError, match=r"scale_by_x acts on matrices, but leaf 'layer/bias' has shape \(4,\).*Label it"
  ):
    views.resolve_views(None, tree, transform="scale_by_x")
  # A callable is only seen at init, so what it returns is checked per leaf there.
  with pytest.raises(
    ValueError, match=r"scale_by_x: dimension_numbers gave leaf 'layer/kernel' \(0, 1\); give each leaf"
  ):
    views.resolve_views(
      lambda p: {"layer": {"kernel": (0, 1)}}, {"layer": {"kernel": jnp.ones((3, 4))}}, transform="scale_by_x"
    )


def test_bad_dimension_numbers_raise():
  with pytest.raises(ValueError, match=r"'w'.*distinct axes in range\(2\)"):
    views.make_view((3, 4), views.DimensionNumbers(0, 0), "w")
  with pytest.raises(ValueError, match=r"'w'.*name axes \[2\], out of range for ndim 2"):
    views.make_view((3, 4), views.DimensionNumbers(0, 2), "w")
  with pytest.raises(ValueError, match="dimension_numbers must be None"):
    views.check_dimension_numbers_spec({"w": (0, 1)})
  with pytest.raises(ValueError, match="must hold ints"):
    views.check_dimension_numbers_spec(views.DimensionNumbers(0.5, 1))


def _qkv(d=8, heads=2, seed=0):
  return jax.random.normal(jax.random.key(seed), (d, 3 * d)), heads, d // heads


def test_output_split_views_fused_qkv_as_three_matrices():
  w, _, _ = _qkv()
  d = w.shape[0]
  view = views.make_view(w.shape, matopt.DimensionNumbers(0, 1, output_split=3), "qkv")
  m = view.to_matrices(w)
  assert m.shape == (3, d, d) and (view.fan_in, view.fan_out, view.batch) == (d, d, 3)
  for i in range(3):  # block i is columns [i d, (i+1) d)
    np.testing.assert_array_equal(m[i], w[:, i * d : (i + 1) * d])
  np.testing.assert_array_equal(view.from_matrices(m), w)


def test_per_head_split_matches_reshape_and_reduction_split():
  w, heads, dh = _qkv()
  d = w.shape[0]
  view = views.make_view(w.shape, matopt.DimensionNumbers(0, 1, output_split=3 * heads), "qkv")
  m = view.to_matrices(w)
  want = jnp.transpose(w.reshape(d, 3, heads, dh), (1, 2, 0, 3)).reshape(3 * heads, d, dh)
  np.testing.assert_array_equal(m, want)
  np.testing.assert_array_equal(view.from_matrices(m), w)
  # Output projection (heads·dh, d): one (dh, d) matrix per head, rows in blocks.
  out = w[:, :d].T
  view = views.make_view(out.shape, matopt.DimensionNumbers(0, 1, reduction_split=heads), "out")
  m = view.to_matrices(out)
  for h in range(heads):
    np.testing.assert_array_equal(m[h], out[h * dh : (h + 1) * dh])
  np.testing.assert_array_equal(view.from_matrices(m), out)
  # Both splits and a batch axis together round-trip.
  stack = jax.random.normal(jax.random.key(1), (3, 6, 8))
  view = views.make_view(stack.shape, matopt.DimensionNumbers(1, 2, reduction_split=2, output_split=4), "s")
  assert view.to_matrices(stack).shape == (3 * 2 * 4, 3, 2)
  np.testing.assert_array_equal(view.from_matrices(view.to_matrices(stack)), stack)


def test_split_msign_is_msign_of_each_block():
  w, heads, dh = _qkv(d=16, heads=4)
  dn = matopt.DimensionNumbers(0, 1, output_split=3 * heads)
  tx = matopt.scale_by_msign(dimension_numbers=dn, method="svd")
  got, _ = tx.update({"qkv": w}, tx.init({"qkv": w}))
  for b in range(3 * heads):
    block = slice(b * dh, (b + 1) * dh)
    np.testing.assert_allclose(got["qkv"][:, block], matopt.msign(w[:, block], method="svd"), atol=1e-5)
  # The shape factor sees one block: √max(1, dh/d) = 1 here, √(3d/d) unsplit.
  scaled, _ = matopt.scale_by_shape(dimension_numbers=dn).update({"qkv": w}, None)
  np.testing.assert_array_equal(scaled["qkv"], w)


@pytest.mark.parametrize(
  ("dn", "message"),
  [
    (matopt.DimensionNumbers(0, 1, output_split=5), "output_split=5 does not divide its fan-out of 24"),
    (matopt.DimensionNumbers(0, 1, reduction_split=3), "reduction_split=3 does not divide its fan-in of 8"),
  ],
)
def test_split_that_does_not_divide_names_the_leaf(dn, message):
  w, _, _ = _qkv()
  with pytest.raises(ValueError, match=message) as err:
    matopt.scale_by_msign(dimension_numbers=dn).init({"attn": {"qkv": w}})
  assert "attn/qkv" in str(err.value) or "qkv" in str(err.value)


@pytest.mark.parametrize("split", [0, -1, 1.5, True])
def test_bad_split_raises_at_construction(split):
  with pytest.raises(ValueError, match="output_split must be a positive int"):
    matopt.scale_by_msign(dimension_numbers=matopt.DimensionNumbers(0, 1, output_split=split))


@pytest.mark.parametrize(
  "make",
  [
    lambda dn: matopt.scale_by_shampoo(precondition_every=1, dimension_numbers=dn),
    lambda dn: matopt.scale_by_soap(precondition_every=1, dimension_numbers=dn),
    lambda dn: matopt.scale_by_lmo("colnorm", dimension_numbers=dn),
  ],
  ids=["shampoo", "soap", "lmo"],
)
def test_split_leaf_equals_separate_leaves(make):
  # Preconditioners of a split fused kernel are those of its blocks as leaves.
  w, _, _ = _qkv(d=8)
  d = w.shape[0]
  fused_tx = make(matopt.DimensionNumbers(0, 1, output_split=3))
  parts_tx = make(None)
  fused, parts = {"qkv": w}, {k: w[:, i * d : (i + 1) * d] for i, k in enumerate("qkv")}
  fs, ps = fused_tx.init(fused), parts_tx.init(parts)
  for step in range(3):
    gw = jax.random.normal(jax.random.key(10 + step), w.shape)
    gf, fs = fused_tx.update({"qkv": gw}, fs, fused)
    gp, ps = parts_tx.update({k: gw[:, i * d : (i + 1) * d] for i, k in enumerate("qkv")}, ps, parts)
    np.testing.assert_allclose(gf["qkv"], jnp.concatenate([gp[k] for k in "qkv"], axis=1), rtol=2e-4, atol=1e-5)
