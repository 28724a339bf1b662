"""Every public optimizer (tests/optimizers/registry.py) in low precision.

(a) bfloat16 and float16 training follow float32: the same init cast down, the
    same 60 steps, the loss curves stay together and all fall well below the
    start.
(b) dtypes: updates keep the parameter dtype in float16, bfloat16, float32 and
    float64, and no state leaf changes dtype, shape or weak type across steps
    (optax's ``lax.cond`` / ``MultiSteps`` contract). Dtypes are a property of
    the program, so (b) traces it (``jax.eval_shape``) instead of compiling
    it; the training runs of (a) execute float32, bfloat16 and float16, where
    ``lax.scan`` refuses a state whose dtypes change.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tests.optimizers.registry import REGISTRY

NAMES = sorted(REGISTRY)
DTYPES = ["float16", "bfloat16", "float32", "float64"]
# XLA's LLVM back end at -O0 compiles these small programs 2-3x faster (same
# maths; both curves of a comparison are compiled alike).
_FAST_COMPILE = {"xla_backend_optimization_level": 0}


# --- (b) dtypes ----------------------------------------------------------------


def _every_kind(dtype):
  """Embedding, hidden matrix and bias, norm scale, head and scalar leaves."""
  leaf = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.dtype(dtype))
  return {
    "Embed_0": {"embedding": leaf(10, 8)},
    "Dense_0": {"kernel": leaf(8, 12), "bias": leaf(12)},
    "LayerNorm_0": {"scale": leaf(12)},
    "head": {"kernel": leaf(12, 5)},
    "temperature": leaf(),
  }


def _signature(tree):
  return jax.tree.map(lambda x: (x.shape, x.dtype, x.weak_type), tree)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", NAMES)
def test_updates_keep_parameter_dtype_and_state_dtypes_are_stable(name, dtype):
  entry = REGISTRY[name]
  with jax.enable_x64(dtype == "float64"):
    params = _every_kind(dtype)
    tx = entry.factory(entry.learning_rate)
    state = jax.eval_shape(tx.init, params)
    first = _signature(state)
    for step in range(3):  # past SOAP's and Shampoo's first preconditioning step
      updates, state = jax.eval_shape(tx.update, params, state, params)
      wrong = {
        jax.tree_util.keystr(path): str(u.dtype)
        for path, u in jax.tree_util.tree_leaves_with_path(updates)
        if u.dtype != dtype
      }
      assert not wrong, f"{name}, step {step}: updates not in {dtype}: {wrong}"
      assert _signature(updates) == _signature(params)
      assert _signature(state) == first, f"{name}, step {step}: state dtypes changed"
      params = jax.eval_shape(optax.apply_updates, params, updates)


# --- (a) half precision trains as float32 -----------------------------------------

VOCAB, WIDTH, HIDDEN, CLASSES, STEPS = 16, 16, 32, 8, 60
_TOKENS = jnp.arange(64, dtype=jnp.int32) % VOCAB
# Each token carries two labels, half the time each: the loss cannot go below
# ln 2, so "final loss within x %" compares losses of the same size.
_LABELS = (_TOKENS * 3 + (jnp.arange(64) // 16) % 2) % CLASSES
FLOOR = float(np.log(2.0))


def _net(dtype):
  """Embedding → tanh hidden layer (+ bias) → head (+ bias): every role."""
  k = jax.random.split(jax.random.key(0), 3)
  normal = lambda key, shape, scale: (jax.random.normal(key, shape) * scale).astype(dtype)
  return {
    "embed": {"embedding": normal(k[0], (VOCAB, WIDTH), 1.0)},
    "hidden": {"kernel": normal(k[1], (WIDTH, HIDDEN), WIDTH**-0.5), "bias": jnp.zeros(HIDDEN, dtype)},
    "head": {"kernel": normal(k[2], (HIDDEN, CLASSES), HIDDEN**-0.5), "bias": jnp.zeros(CLASSES, dtype)},
  }


def _loss(params):
  # The forward pass runs in the parameters' dtype; the loss in float32.
  x = params["embed"]["embedding"][_TOKENS]
  h = jnp.tanh(x @ params["hidden"]["kernel"] + params["hidden"]["bias"][None, :])
  logits = (h @ params["head"]["kernel"] + params["head"]["bias"][None, :]).astype(jnp.float32)
  return optax.softmax_cross_entropy_with_integer_labels(logits, _LABELS).mean()


def _curves(factory):
  """Loss curves in float32, bfloat16 and float16 from one compiled program."""
  dtypes = (jnp.float32, jnp.bfloat16, jnp.float16)
  txs = [factory() for _ in dtypes]

  def train(tx, params):
    def body(carry, _):
      params, state = carry
      loss, grads = jax.value_and_grad(_loss)(params)
      updates, state = tx.update(grads, state, params)
      return (optax.apply_updates(params, updates), state), loss

    (params, _), losses = jax.lax.scan(body, (params, tx.init(params)), None, length=STEPS)
    return params, losses

  run = jax.jit(lambda nets: [train(tx, net) for tx, net in zip(txs, nets)], compiler_options=_FAST_COMPILE)
  curves = []
  for dtype, (params, losses) in zip(dtypes, run([_net(dtype) for dtype in dtypes])):
    assert all(p.dtype == dtype for p in jax.tree.leaves(params))
    curves.append(np.asarray(losses))
  return curves


@pytest.mark.parametrize("name", NAMES)
def test_half_precision_trains_as_float32(name):
  entry = REGISTRY[name]
  # Cosine decay to 0: constant-step methods (Scion's LMO steps have a fixed
  # size) otherwise end on an oscillation whose phase round-off decides.
  schedule = optax.cosine_decay_schedule(entry.learning_rate, STEPS)
  f32, bf16, f16 = _curves(lambda: entry.factory(schedule))
  l0 = f32[0]
  for label, half in (("bfloat16", bf16), ("float16", f16)):
    show = (label, f32[::10], half[::10])
    # Both learn: well below the start (2.4; the floor is ln 2 = 0.69).
    assert f32[-1] < 0.6 * l0 and half[-1] < 0.6 * l0, show
    # Half precision ends within 5% of float32's final loss (measured: ≤ 2.3%
    # in bfloat16, SOAP; ≤ 0.2% in float16) and never strays by more than 10%
    # of the initial loss on the way (≤ 7.6% measured, constrained Scion
    # mid-run; ≤ 1.2% for every other optimizer). Before muon's AdamW kept
    # float16 leaves' moments in float32, float16 was NaN from step 0.
    assert abs(half[-1] - f32[-1]) < 0.05 * f32[-1], show
    assert np.max(np.abs(half - f32)) < 0.10 * l0, show
