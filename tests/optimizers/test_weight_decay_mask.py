"""weight_decay reaches matrices, not vectors (biases, norm scales), unless a mask says otherwise."""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import matopt

LR = 0.05
WD = 0.1
# Every optimizer with a weight_decay option.
FACTORIES = {
  "muon": matopt.muon,
  "normuon": matopt.normuon,
  "adamuon": matopt.adamuon,
  "signum": matopt.signum,
  "nsgd": matopt.nsgd,
  "clipped_sgd": matopt.clipped_sgd,
  "shampoo": matopt.shampoo,
  "soap": matopt.soap,
}
VECTORS = ("Dense_0/bias", "LayerNorm_0/scale", "blocks/LayerNorm_0/scale", "blocks/Dense_0/bias")


def _normal(shape, seed):
  return jax.random.normal(jax.random.key(seed), shape)


def _params():
  # Matrices (embedding, hidden, head) and vectors, stacked (L, d) ones (nn.scan) included.
  return {
    "embed": {"embedding": _normal((12, 6), 0)},
    "Dense_0": {"kernel": _normal((6, 10), 1), "bias": _normal((10,), 2)},
    "LayerNorm_0": {"scale": 1.0 + 0.1 * _normal((10,), 3)},
    "blocks": {"Dense_0": {"bias": _normal((3, 10), 5)}, "LayerNorm_0": {"scale": 1.0 + 0.1 * _normal((3, 10), 6)}},
    "head": {"kernel": _normal((10, 4), 7)},
  }


def _flat(tree):
  return {"/".join(str(k.key) for k in path): x for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _zero_grad_update(tx, params):
  # Zero gradients: every direction is 0, so the update is the decay alone, −η λ m ⊙ W.
  grads = jax.tree.map(jnp.zeros_like, params)
  updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  return _flat(updates)


def _decayed_by(updates, params):
  """Leaf → c ≥ 0 with update = −c W (asserting that form)."""
  out = {}
  for path, u in updates.items():
    w = np.asarray(params[path])
    c = -float(np.vdot(u, w) / np.vdot(w, w))
    np.testing.assert_allclose(u, -c * w, rtol=1e-5, atol=1e-8, err_msg=path)
    out[path] = c
  return out


@pytest.mark.parametrize("cautious", [False, True], ids=["plain", "cautious"])
@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_default_decays_matrices_not_vectors(name, cautious):
  params = _params()
  tx = FACTORIES[name](LR, weight_decay=WD, cautious_weight_decay=cautious)
  decay = _decayed_by(_zero_grad_update(tx, params), _flat(params))
  for path, c in decay.items():
    if path in VECTORS:
      assert c == 0.0, f"{name} decays the vector {path}"
    else:
      assert c > 0.0, f"{name} does not decay the matrix {path}"


# shampoo and soap take no weight_decay_mask (yet): their signatures are another change's.
MASKABLE = sorted(n for n in FACTORIES if "weight_decay_mask" in inspect.signature(FACTORIES[n]).parameters)


@pytest.mark.parametrize("name", MASKABLE)
def test_mask_decays_what_it_selects(name):
  params = _params()
  everything = FACTORIES[name](LR, weight_decay=WD, weight_decay_mask=lambda p: jax.tree.map(lambda _: True, p))
  decay = _decayed_by(_zero_grad_update(everything, params), _flat(params))
  assert all(c > 0 for c in decay.values()), decay
  # A bool tree: decay the head only.
  only_head = jax.tree.map(lambda _: False, params)
  only_head["head"]["kernel"] = True
  tx = FACTORIES[name](LR, weight_decay=WD, weight_decay_mask=only_head)
  decay = _decayed_by(_zero_grad_update(tx, params), _flat(params))
  assert {p for p, c in decay.items() if c > 0} == {"head/kernel"}, decay


def test_muon_uses_its_own_labels_for_the_default():
  # A leaf the user labels "vector" is not decayed, whatever its shape.
  params = _params()
  labels = lambda p: {**matopt.labels.by_role(p), "head": {"kernel": "vector"}}
  tx = matopt.muon(LR, weight_decay=WD, labels=labels)
  decay = _decayed_by(_zero_grad_update(tx, params), _flat(params))
  assert decay["head/kernel"] == 0.0 and decay["embed/embedding"] > 0.0


@pytest.mark.parametrize("mask", [True, jnp.array(True), "vector"])
def test_a_bare_mask_is_refused(mask):
  with pytest.raises(ValueError, match="weight_decay_mask"):
    matopt.signum(LR, weight_decay=WD, weight_decay_mask=mask)
