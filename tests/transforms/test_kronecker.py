"""The Kronecker-factor skeleton shared by Shampoo and SOAP."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from matopt.transforms import kronecker as kron


def _normal(seed, shape):
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def test_init_factors_zero_statistics_identity_factors_placeholders():
  f = kron.init_factors((2, 3), 4, 5, left=True, right=False)
  assert f.stats_left.shape == f.left.shape == (2, 3, 4, 4)
  np.testing.assert_array_equal(f.stats_left, 0.0)
  np.testing.assert_array_equal(f.left, np.broadcast_to(np.eye(4), (2, 3, 4, 4)))
  assert f.stats_right.shape == f.right.shape == kron.EMPTY
  assert all(x.shape == kron.EMPTY and x.dtype == jnp.float32 for x in kron.no_factors())


def test_accumulate_is_the_ema_of_g_gt_and_gt_g_on_kept_sides():
  g = _normal(0, (2, 3, 5))
  f = kron.Factors(_normal(1, (2, 3, 3)), kron.placeholder(), _normal(2, (2, 3, 3)), kron.placeholder())
  out = kron.accumulate(f, g, 0.9, 0.1)
  gn, sl = np.asarray(g, np.float64), np.asarray(f.stats_left, np.float64)
  np.testing.assert_allclose(out.stats_left, 0.9 * sl + 0.1 * gn @ gn.transpose(0, 2, 1), rtol=1e-5, atol=1e-6)
  assert out.stats_right.shape == kron.EMPTY
  assert out.left is f.left and out.right is f.right  # factors untouched
  both = kron.init_factors((1,), 3, 5, left=True, right=True)
  out = kron.accumulate(both, g[:1], 0.0, 1.0)
  np.testing.assert_allclose(out.stats_right[0], gn[0].T @ gn[0], rtol=1e-5, atol=1e-5)


def test_two_sided_skips_placeholders():
  x, a, b = _normal(0, (3, 4)), _normal(1, (3, 3)), _normal(2, (4, 4))
  e = kron.placeholder()
  np.testing.assert_allclose(kron.two_sided(a, x, b), a @ x @ b, rtol=1e-6)
  np.testing.assert_allclose(kron.two_sided(e, x, b), x @ b, rtol=1e-6)
  np.testing.assert_allclose(kron.two_sided(a, x, e), a @ x, rtol=1e-6)
  np.testing.assert_array_equal(kron.two_sided(e, x, e), x)


def test_split_join_round_trip_keeps_masked_leaves():
  params = {"a": jnp.zeros((3, 4)), "m": optax.MaskedNode(), "n": None, "v": jnp.zeros(5)}
  leaves, treedef = kron.leaves_of(params)
  per_leaf = [
    leaf
    if leaf is None or isinstance(leaf, optax.MaskedNode)
    else (kron.init_factors((1,), 3, 4, True, True) if leaf.ndim == 2 else kron.no_factors())
    for leaf in leaves
  ]
  trees = kron.join(treedef, per_leaf)
  assert trees.stats_left["a"].shape == (1, 3, 3) and trees.right["a"].shape == (1, 4, 4)
  assert isinstance(trees.left["m"], optax.MaskedNode) and trees.left["n"] is None
  assert trees.stats_left["v"].shape == kron.EMPTY
  back = kron.split(trees)
  assert isinstance(back[1], optax.MaskedNode) and back[2] is None
  for got, want in ((back[0], per_leaf[0]), (back[3], per_leaf[3])):
    assert isinstance(got, kron.Factors)
    jax.tree.map(np.testing.assert_array_equal, got, want)
  empty = kron.join(kron.leaves_of({})[1], [])
  assert empty == kron.Factors({}, {}, {}, {})


def test_sides_gather_scatter():
  e = kron.placeholder()
  left_only = kron.Factors(_normal(0, (1, 2, 2)), e, _normal(1, (1, 2, 2)), e)
  both = kron.init_factors((1,), 3, 4, True, True)
  per_leaf = [left_only, optax.MaskedNode(), kron.no_factors(), both]
  where = kron.sides(per_leaf)
  assert where == [kron.Side(0, True), kron.Side(3, True), kron.Side(3, False)]
  stats, factors = kron.gather(per_leaf, where)
  assert [s.shape[-1] for s in stats] == [2, 3, 4]
  assert factors[0] is left_only.left and factors[2] is both.right
  new = [q + 1.0 for q in factors]
  out = kron.scatter(per_leaf, where, new)
  assert out[0].left is new[0] and out[3].left is new[1] and out[3].right is new[2]
  assert out[3].stats_right is both.stats_right and out[1] is per_leaf[1] and out[2] is per_leaf[2]
  assert per_leaf[0].left is left_only.left  # the input list is not changed


def test_map_sides_equals_side_by_side_and_restores_leading_axes():
  # Two sizes in one call (grouped separately), with leading block axes, and a
  # second output of another shape (a permutation), as SOAP's refresh returns.
  stats = [_normal(0, (2, 3, 4, 4)), _normal(1, (1, 5, 5)), _normal(2, (4, 4, 4))]
  bases = [_normal(3, s.shape) for s in stats]
  fn = lambda a, q: (a @ q, jnp.argmax(a, axis=-1))
  got = kron.map_sides(fn, stats, bases)
  for (prod, perm), a, q in zip(got, stats, bases):
    assert prod.shape == a.shape and perm.shape == a.shape[:-1]
    np.testing.assert_allclose(prod, a @ q, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(perm, jnp.argmax(a, axis=-1))
