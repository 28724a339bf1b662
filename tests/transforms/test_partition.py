"""matopt.partition: optax.partition with labels checked at init, extra
arguments (qk_clip's ``max_logits``) passed through ``optax.chain``."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import matopt


@pytest.fixture(autouse=True)
def _standard_promotion():
  # optax's own transforms (adam's bias correction) are not strict-clean; the
  # code under test here is routing, not matopt's math (see tests/conftest.py).
  with jax.numpy_dtype_promotion("standard"):
    yield


def _tree(seed=0):
  k = jax.random.split(jax.random.key(seed), 4)
  return {
    "Dense_0": {"kernel": jax.random.normal(k[0], (6, 3)), "bias": jax.random.normal(k[1], (3,))},
    "Dense_1": {"kernel": jax.random.normal(k[2], (3, 7)), "bias": jax.random.normal(k[3], (7,))},
  }


def _scale_by_extra():
  """Multiplies updates by the extra argument ``factor`` (required: a
  transform that never receives it fails loudly)."""

  def init_fn(params):
    del params
    return optax.EmptyState()

  def update_fn(updates, state, params=None, *, factor=None, **extra_args):
    del params, extra_args
    if factor is None:
      raise AssertionError("the extra argument `factor` did not reach the inner transform")
    return jax.tree.map(lambda u: u * factor, updates), state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def test_extra_args_reach_inner_transforms_through_chain():
  params, grads = _tree(0), _tree(1)
  labels = lambda p: jax.tree.map(lambda x: "matrix" if x.ndim == 2 else "vector", p)
  tx = optax.chain(matopt.partition({"matrix": _scale_by_extra(), "vector": optax.sgd(0.5)}, labels), optax.scale(-1.0))
  assert isinstance(tx, optax.GradientTransformationExtraArgs)
  state = tx.init(params)
  updates, _ = jax.jit(tx.update)(grads, state, params, factor=jnp.float32(3.0))
  for name in ("Dense_0", "Dense_1"):
    np.testing.assert_allclose(updates[name]["kernel"], -3.0 * grads[name]["kernel"], rtol=1e-6)
    np.testing.assert_allclose(updates[name]["bias"], 0.5 * grads[name]["bias"], rtol=1e-6)


def test_extra_args_reach_qk_clip_in_a_partition():
  # A real consumer of an extra argument: MuonClip under matopt.partition,
  # itself inside optax.chain, must see the logits (τ = 1 < 4: clipped).
  d, heads, dh = 8, 2, 4
  k = jax.random.split(jax.random.key(0), 3)
  params = {
    "attn": {
      "query": {"kernel": jax.random.normal(k[0], (d, heads * dh))},
      "key": {"kernel": jax.random.normal(k[1], (d, heads * dh))},
    },
    "norm": {"scale": jnp.ones(d)},
  }
  grads = jax.tree.map(lambda x: 0.1 * jnp.cos(x), params)
  clip = matopt.muon_clip(0.02, tau=1.0, head_dim=dh)
  routed = lambda p: jax.tree.map(lambda x: "clip" if x.ndim == 2 else "rest", p)
  tx = optax.chain(matopt.partition({"clip": clip, "rest": optax.sgd(0.1)}, routed), optax.identity())
  max_logits = {"attn": jnp.full((heads,), 4.0)}
  got, _ = tx.update(grads, tx.init(params), params, max_logits=max_logits)
  want, _ = clip.update(grads, clip.init(params), params, max_logits=max_logits)
  for a, b in zip(jax.tree.leaves(got["attn"]), jax.tree.leaves(want["attn"])):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
  # And the clip did act: unclipped Muon gives another update.
  plain, _ = clip.update(grads, clip.init(params), params, max_logits={"attn": jnp.zeros((heads,))})
  assert not np.allclose(got["attn"]["query"]["kernel"], plain["attn"]["query"]["kernel"])


def test_state_and_updates_equal_optax_partition():
  params = _tree(0)
  labels = {"Dense_0": {"kernel": "a", "bias": "b"}, "Dense_1": "a"}  # a prefix tree, as optax allows
  transforms = {"a": optax.adam(0.1), "b": optax.sgd(0.2, momentum=0.9)}
  ours, theirs = matopt.partition(transforms, labels), optax.partition(transforms, labels)
  s_ours, s_theirs = ours.init(params), theirs.init(params)
  assert jax.tree.structure(s_ours) == jax.tree.structure(s_theirs)
  for seed in range(1, 4):
    g = _tree(seed)
    u_ours, s_ours = ours.update(g, s_ours, params)
    u_theirs, s_theirs = theirs.update(g, s_theirs, params)
    for a, b in zip(jax.tree.leaves((u_ours, s_ours)), jax.tree.leaves((u_theirs, s_theirs))):
      np.testing.assert_array_equal(a, b)


def test_mask_compatible_extra_args_as_in_optax():
  # optax's option: extra arguments shaped like the params are masked per label.
  params = _tree(0)
  labels = lambda p: jax.tree.map(lambda x: "matrix" if x.ndim == 2 else "vector", p)

  def add_extra():
    def update_fn(updates, state, params=None, *, extra=None, **_):
      del params
      return jax.tree.map(jnp.add, updates, extra), state

    return optax.GradientTransformationExtraArgs(lambda p: optax.EmptyState(), update_fn)

  tx = matopt.partition(
    {"matrix": add_extra(), "vector": optax.identity()}, param_labels=labels, mask_compatible_extra_args=True
  )
  extra = _tree(5)
  got, _ = tx.update(params, tx.init(params), params, extra=extra)
  np.testing.assert_allclose(got["Dense_1"]["kernel"], params["Dense_1"]["kernel"] + extra["Dense_1"]["kernel"])
  np.testing.assert_array_equal(got["Dense_1"]["bias"], params["Dense_1"]["bias"])


def test_labels_checked_at_init_and_old_keyword_kept():
  params = _tree(0)
  with pytest.raises(ValueError, match=r"Leaf 'Dense_1/bias' has label 'vector'.*only for \('hidden',\)"):
    matopt.partition({"hidden": optax.sgd(0.1)}, param_labels=matopt.labels.by_role).init(
      {"Dense_1": params["Dense_1"]}
    )
  # The name before optax's (``labels=``) still works.
  tx = matopt.partition({"hidden": optax.sgd(0.1), "vector": optax.set_to_zero()}, labels=matopt.labels.by_role)
  out, _ = tx.update(params, tx.init(params))
  np.testing.assert_array_equal(out["Dense_0"]["bias"], 0.0)
  with pytest.raises(ValueError, match=r"param_labels.*labels"):
    matopt.partition({"hidden": optax.sgd(0.1)}, matopt.labels.by_role, labels=matopt.labels.by_role)
  with pytest.raises(ValueError, match=r"param_labels"):
    matopt.partition({"hidden": optax.sgd(0.1)})
