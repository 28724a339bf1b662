"""Every optimizer in every float dtype: updates in the parameter's dtype, a
state whose dtypes do not change (optax's ``lax.cond`` / ``MultiSteps``
contract), and bfloat16 training that follows the float32 loss curve."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import matopt

# Radii for a net this small (the nanoGPT defaults of 50 / 3000 are for width 768).
_RADII = {"embedding": 1.0, "hidden": 1.0, "head": 16.0, "vector": 1.0}

# (factory, extra update kwargs); learning rates that train the MLP below in
# float32 in 100 steps.
OPTIMIZERS = {
    "muon": (lambda: matopt.muon(0.02, adam_learning_rate=3e-3), {}),
    # No attention module in these trees: qk_clip has nothing to clip.
    "muon_clip": (lambda: matopt.muon_clip(0.02, tau=100.0, adam_learning_rate=3e-3), {"max_logits": {}}),
    "normuon": (lambda: matopt.normuon(0.02, adam_learning_rate=3e-3), {}),
    "adamuon": (lambda: matopt.adamuon(3e-3), {}),
    "scion": (lambda: matopt.scion(0.02, radii=_RADII), {}),
    "unconstrained_scion": (lambda: matopt.unconstrained_scion(0.01, radii=_RADII), {}),
    "shampoo": (lambda: matopt.shampoo(3e-3), {}),
    "soap": (lambda: matopt.soap(3e-3), {}),
    "signum": (lambda: matopt.signum(1e-3), {}),
    "nsgd": (lambda: matopt.nsgd(0.1), {}),
    "clipped_sgd": (lambda: matopt.clipped_sgd(0.1), {}),
}
NAMES = sorted(OPTIMIZERS)
DTYPES = ["float16", "bfloat16", "float32", "float64"]


def _every_kind(dtype, seed):
  """Embedding, hidden matrix, head, vector and scalar leaves."""
  keys = jax.random.split(jax.random.key(seed), 6)
  leaf = lambda i, shape: jax.random.normal(keys[i], shape).astype(dtype)
  return {"Embed_0": {"embedding": leaf(0, (10, 8))},
          "Dense_0": {"kernel": leaf(1, (8, 12)), "bias": leaf(2, (12,))},
          "LayerNorm_0": {"scale": leaf(3, (12,))},
          "head": {"kernel": leaf(4, (12, 5))},
          "temperature": leaf(5, ())}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", NAMES)
def test_updates_keep_parameter_dtype_and_state_dtypes_are_stable(name, dtype):
  factory, extra = OPTIMIZERS[name]
  with jax.enable_x64(dtype == "float64"):
    params = _every_kind(dtype, 0)
    tx = factory()
    state = tx.init(params)
    dtypes = lambda tree: jax.tree.map(lambda x: jnp.result_type(x), tree)
    before = dtypes(state)
    step = jax.jit(lambda g, s, p: tx.update(g, s, p, **extra))
    for seed in (1, 2):
      updates, state = step(_every_kind(dtype, seed), state, params)
      params = optax.apply_updates(params, updates)
    wrong = {jax.tree_util.keystr(path): str(u.dtype)
             for path, u in jax.tree_util.tree_leaves_with_path(updates) if u.dtype != dtype}
    assert not wrong, f"{name}: updates not in {dtype}: {wrong}"
    assert dtypes(state) == before
    assert all(bool(jnp.all(jnp.isfinite(u))) for u in jax.tree.leaves(updates))


# A 3-layer MLP regression, 32 → 64 → 64 → 8 (the shape of issue 14's SOAP report).
_SIZES = {"Dense_0": (32, 64), "Dense_1": (64, 64), "head": (64, 8)}


def _mlp(dtype):
  keys = jax.random.split(jax.random.key(0), 3)
  return {name: {"kernel": (jax.random.normal(k, s) / np.sqrt(s[0])).astype(dtype), "bias": jnp.zeros(s[1], dtype)}
          for k, (name, s) in zip(keys, _SIZES.items())}


def _loss_curve(tx, extra, dtype, steps=100):
  kx, ky = jax.random.split(jax.random.key(1))
  x = jax.random.normal(kx, (256, 32))
  y = jnp.tanh(2.0 * x @ jax.random.normal(ky, (32, 8)) / np.sqrt(32))

  def loss_fn(p):
    h = x.astype(dtype)  # the forward pass runs in the parameters' dtype
    for i, name in enumerate(_SIZES):
      h = h @ p[name]["kernel"] + p[name]["bias"][None, :]
      h = jnp.tanh(h) if i < 2 else h
    return jnp.mean((h.astype(jnp.float32) - y) ** 2)

  def body(carry, _):
    p, s = carry
    loss, g = jax.value_and_grad(loss_fn)(p)
    u, s = tx.update(g, s, p, **extra)
    return (optax.apply_updates(p, u), s), loss

  params = _mlp(dtype)
  run = jax.jit(lambda p, s: jax.lax.scan(body, (p, s), None, length=steps)[1])
  return np.asarray(run(params, tx.init(params)))


@pytest.mark.parametrize("name", NAMES)
def test_bfloat16_trains_as_float32(name):
  factory, extra = OPTIMIZERS[name]
  f32 = _loss_curve(factory(), extra, jnp.float32)
  bf16 = _loss_curve(factory(), extra, jnp.bfloat16)
  l0 = f32[0]
  # bfloat16 rounds every weight to 3 significant digits each step, so the
  # curves drift apart a little (≤ 3.6% of the initial loss over these
  # optimizers); SOAP's bfloat16 momentum used to blow up on the second step.
  assert np.max(np.abs(bf16 - f32)) < 0.05 * l0, (f32[::10], bf16[::10])
  assert f32[-1] < 0.2 * l0 and bf16[-1] < 0.2 * l0, (f32[::10], bf16[::10])
  assert bf16[-1] < f32[-1] + 0.05 * l0
