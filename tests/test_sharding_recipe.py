"""The README's sharding recipe, for every optimizer, on every mesh the README
shows and on trees as they come: groups of 1, 3 and 5 same-shape matrices,
tall and wide ones, sizes the device count does not divide, a 2-layer
transformer. Results equal one device's and keep the parameter's sharding."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import matopt
from matopt import sharding

pytestmark = pytest.mark.skipif(jax.device_count() != 8, reason="needs 8 (host) devices")

D = 16  # model width


def _normal(seed):
  # NumPy draws: no compilation per shape, as jax.random would need.
  rng = np.random.default_rng(seed)
  return lambda *shape: rng.standard_normal(shape).astype(np.float32)


def _transformer(seed):
  """A 2-layer GPT-like tree: per layer 4 square attention matrices, one wide
  and one tall MLP matrix (groups of 2), biases and norm scales."""
  normal = _normal(seed)
  params = {
    "wte": {"embedding": normal(40, D)},
    "lm_head": {"kernel": normal(D, 40)},
    "ln_f": {"scale": 1.0 + normal(D)},
  }
  for i in range(2):
    params[f"h_{i}"] = {
      "attn": {
        "query": {"kernel": normal(D, D), "bias": normal(D)},
        "key": {"kernel": normal(D, D)},
        "value": {"kernel": normal(D, D)},
        "c_proj": {"kernel": normal(D, D)},
      },
      "ln": {"scale": 1.0 + normal(D)},
      "mlp": {"c_fc": {"kernel": normal(D, 40), "bias": normal(40)}, "c_proj": {"kernel": normal(40, D)}},
    }
  return params


def _odd(seed):
  """Groups the device count does not fit: 3 squares of a size 8 does not
  divide, 5 wide ones (padded to 8) with their biases, one tall, one wide,
  one (6, 10) whose rows a 4-way axis does not split."""
  normal = _normal(seed)
  params = {f"sq_{i}": {"kernel": normal(12, 12)} for i in range(3)}
  params |= {f"wide_{i}": {"kernel": normal(8, 24), "bias": normal(24)} for i in range(5)}
  params |= {"tall": {"kernel": normal(48, 8)}, "odd": {"kernel": normal(6, 10)}, "fat": {"kernel": normal(8, 48)}}
  return params


TREES = {"transformer": _transformer, "odd": _odd}

# muon_clip gets the logits of both attention modules (τ = 1 < 4: it clips).
MAX_LOGITS = {f"h_{i}": {"attn": jnp.array([4.0, 0.5])} for i in range(2)}

OPTIMIZERS = {
  "muon": lambda: matopt.muon(0.02),
  "muon_clip": lambda: matopt.muon_clip(0.02, tau=1.0, head_dim=8),
  "normuon": lambda: matopt.normuon(0.02),
  "adamuon": lambda: matopt.adamuon(0.02),
  "scion": lambda: matopt.scion(0.01),
  "unconstrained_scion": lambda: matopt.unconstrained_scion(0.01),
  # Preconditioned every step, with a ridge, and SOAP's bases only for the
  # sides whose statistics have full rank from the first step (≤ 16 here):
  # in the first steps, roots of rank-deficient statistics amplify rounding
  # (any change of summation order) in their null space, and SOAP's Adam is
  # run in a basis that rounding chooses there (issue 14, item 13; the
  # defaults' mesh tolerance: tests/test_sharding_preconditioners.py).
  "shampoo": lambda: matopt.shampoo(1e-3, precondition_every=1, eps=1e-4),
  "soap": lambda: matopt.soap(3e-3, precondition_every=1, max_precond_dim=16),
  "signum": lambda: matopt.signum(1e-3),
  "nsgd": lambda: matopt.nsgd(1e-3),
  "clipped_sgd": lambda: matopt.clipped_sgd(1e-3),
}

# (mesh shape, axis type, placement): the README's 2-D mesh with
# jax.make_mesh's default (Explicit) axes and with Auto axes, a 1-D mesh, and
# parameters replicated over the mesh.
MESHES = {
  "4x2-explicit": ((4, 2), AxisType.Explicit, "sharded"),
  "4x2-auto": ((4, 2), AxisType.Auto, "sharded"),
  "8-explicit": ((8,), AxisType.Explicit, "sharded"),
  "4x2-explicit-replicated": ((4, 2), AxisType.Explicit, "replicated"),
  "8-auto-replicated": ((8,), AxisType.Auto, "replicated"),
}
README_MESH = "4x2-explicit"

# Every optimizer on the README's mesh and a 2-layer transformer; the odd
# groups there for the optimizers whose matrix work is grouped (Newton–
# Schulz, LMOs: matopt.sharding.map_grouped). On the other meshes, Muon's
# grouped Newton–Schulz on the odd groups, and Shampoo's roots
# (map_stacked under auto_axes_update) where Auto axes leave the updates'
# layout to XLA. (Shampoo and SOAP on the odd tree: the statistics of its
# wide matrices stay rank-deficient in the first steps, item 13 of issue
# 14.) Each case compiles two updates (mesh, one device) of 1-3 s each on a
# CPU: the full product would take minutes.
CASES = [(README_MESH, "transformer", name) for name in OPTIMIZERS]
CASES += [(README_MESH, "odd", name) for name in ("muon", "scion")]
CASES += [(mesh, "odd", "muon") for mesh in MESHES if mesh != README_MESH]
CASES += [(mesh, "transformer", "shampoo") for mesh in ("4x2-auto", "8-auto-replicated")]

# Compiled without LLVM's optimisations, on both sides: about half the
# compile time of these small programs (which run in milliseconds).
FAST_COMPILE = {"xla_backend_optimization_level": 0}


def _spec(x, mesh, placement):
  """The README's layout: fan-in over the first mesh axis, fan-out over the
  second, each where its size divides; vectors over the first."""
  if placement == "replicated":
    return P()
  names = mesh.axis_names
  fits = lambda dim, i: names[i] if i < len(names) and x.shape[dim] % mesh.shape[names[i]] == 0 else None
  if x.ndim == 1:
    return P(fits(0, 0))
  return P(*[None] * (x.ndim - 2), fits(-2, 0), fits(-1, 1))


def _steps(update, grads, state, params, extra, pin=False):
  """Two updates by one compiled ``update`` (a changed input sharding, such as
  state coming back in another layout, is an error). ``pin``: outputs in the
  inputs' layouts, via ``out_shardings``."""
  out_shardings = jax.tree.map(lambda x: x.sharding, (grads[0], state)) if pin else None
  compiled = jax.jit(update, out_shardings=out_shardings).lower(grads[0], state, params, **extra).compile(FAST_COMPILE)
  out = []
  for g in grads:
    updates, state = compiled(g, state, params, **extra)
    out.append(updates)
  return out


def _extra(name):
  return {"max_logits": MAX_LOGITS} if name == "muon_clip" else {}


def _relative_error(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


@functools.cache
def _single_device(tree, name):
  params = TREES[tree](0)
  grads = [TREES[tree](s) for s in (1, 2)]
  tx = OPTIMIZERS[name]()
  return _steps(tx.update, grads, tx.init(params), params, _extra(name))


@pytest.mark.parametrize("mesh_kind, tree, name", CASES, ids=["-".join(c) for c in CASES])
def test_recipe_equals_one_device_and_keeps_shardings(mesh_kind, tree, name):
  shape, axis_type, placement = MESHES[mesh_kind]
  mesh = jax.make_mesh(shape, ("data", "model")[: len(shape)], axis_types=(axis_type,) * len(shape))
  put = lambda t: jax.tree.map(lambda x: jax.device_put(x, NamedSharding(mesh, _spec(x, mesh, placement))), t)
  params = put(TREES[tree](0))
  grads = [put(TREES[tree](s)) for s in (1, 2)]
  tx = OPTIMIZERS[name]()
  state = sharding.init_state(tx, params)
  with jax.set_mesh(mesh):
    # Under Auto axes the layout of what jit returns is XLA's choice: the
    # recipe there pins it with out_shardings (as matopt.experiments.train
    # does). Explicit axes need nothing: the types carry the layouts.
    got = _steps(tx.update, grads, state, params, _extra(name), pin=axis_type == AxisType.Auto)
  want = _single_device(tree, name)
  # Float tolerance: sums in another order, through Newton–Schulz or roots.
  tolerance = 1e-3 if name in ("shampoo", "soap") else 1e-4
  flat_params = jax.tree_util.tree_flatten_with_path(params)[0]
  for t, (g, w) in enumerate(zip(got, want)):
    for (path, p), a, b in zip(flat_params, jax.tree.leaves(g), jax.tree.leaves(w)):
      where = f"step {t + 1}, {jax.tree_util.keystr(path)}"
      assert _relative_error(a, b) < tolerance, (where, _relative_error(a, b))
      assert a.dtype == p.dtype, where
      assert a.sharding.is_equivalent_to(p.sharding, p.ndim), (where, a.sharding, p.sharding)
