"""Decoupled and cautious weight decay against numpy."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import matopt


def _tree(seed):
  rng = np.random.default_rng(seed)
  return {
    "w": jnp.asarray(rng.standard_normal((6, 5)), jnp.float32),
    "b": jnp.asarray(rng.standard_normal(5), jnp.float32),
  }


def test_plain_decay_is_optax():
  u, w = _tree(0), _tree(1)
  got, _ = matopt.add_decayed_weights(0.1).update(u, optax.EmptyState(), w)
  want, _ = optax.add_decayed_weights(0.1).update(u, optax.EmptyState(), w)
  jax.tree.map(np.testing.assert_array_equal, got, want)


def test_cautious_decay_matches_numpy_and_masks_leaves():
  u, w = _tree(2), _tree(3)
  lam = 0.3
  tx = matopt.add_decayed_weights(lam, cautious=True)
  got, _ = tx.update(u, tx.init(w), w)
  for k in u:
    un, wn = np.asarray(u[k]), np.asarray(w[k])
    agree = un * wn >= 0
    assert 0 < agree.sum() < agree.size  # both cases present
    np.testing.assert_allclose(got[k], un + lam * agree * wn, rtol=1e-6)
  masked = matopt.add_decayed_weights(lam, cautious=True, mask={"w": True, "b": False})
  got, _ = masked.update(u, masked.init(w), w)
  np.testing.assert_array_equal(got["b"], u["b"])
  assert not np.allclose(got["w"], u["w"])


def test_cautious_decay_keeps_bf16():
  u = jax.tree.map(lambda x: x.astype(jnp.bfloat16), _tree(4))
  w = jax.tree.map(lambda x: x.astype(jnp.bfloat16), _tree(5))
  got, _ = matopt.add_decayed_weights(0.1, cautious=True).update(u, optax.EmptyState(), w)
  assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(got))


@pytest.mark.parametrize(
  ("kwargs", "message"),
  [
    ({"weight_decay": -0.1}, "weight_decay"),
    ({"weight_decay": 0.1, "cautious": "yes"}, "cautious must be True or False"),
  ],
)
def test_bad_options_raise_at_construction(kwargs, message):
  with pytest.raises(ValueError, match=message):
    matopt.add_decayed_weights(**kwargs)


def test_cautious_decay_needs_params():
  tx = matopt.add_decayed_weights(0.1, cautious=True)
  with pytest.raises(ValueError, match="needs params"):
    tx.update(_tree(0), optax.EmptyState())
