"""Scion parity: pytorch-optimizer's SCION / SCIONLight and heavyball's Scion,
run as published on the inputs matopt gets.

Layouts. torch weights are ``A (d_out, d_in)``; matopt's Flax kernels are
``W = Aᵀ (d_in, d_out)``, so every matrix crosses with a transpose, and the
Scion paper's ColNorm (columns of A: one per input) is matopt's ``"colnorm"``
on rows of W (docs/conventions.md, "Norms and their LMOs in Flax layout"). Embedding tables are ``(vocab, dim)`` in both
libraries: no transpose, and the reference's ``Col(transpose=True)`` (its
embedding setting) is ``"colnorm"`` on the table as it is.

What each reference implements (read from the installed source):

* pytorch-optimizer 4.1.0 ``SCION``: ``d ← lerp(d, g, momentum)`` (its momentum
  is α, the new gradient's weight, as in the paper; matopt's ``momentum`` is
  the decay β = 1 − α), ``W ← (1 − γ)W − γρ
  lmo(d)`` with ``constraint=True`` (SCG) or ``W − γρ lmo(d)`` (uSCG); LMOs
  Col / Row / Sign / Spectral / SpectralConv / BiasRMS / Auto (BiasRMS for
  vectors, Spectral for matrices, SpectralConv for conv kernels), each
  dividing by ``rms + 1e-8``. Its Newton–Schulz runs in bfloat16.
  ``SCIONLight`` keeps ``Σ (1 − α)^k g`` in ``p.grad`` (= d/α; the LMOs are
  scale invariant, so the same steps).
* heavyball 3.2.1 ``Scion``: uSCG with the Auto norm only, a debiased EMA with
  ``β = betas[0]`` (matopt's ``momentum``; debiasing rescales d, which the LMO ignores), You
  Jiacheng's 5-step Newton–Schulz coefficients, and it overwrites the
  parameters with its own norm-ball initialisation at the first step.

Tolerances are round-off where the maths is the same: Newton–Schulz is run in
float32 (pytorch-optimizer's own ``dtype`` argument) or float64 (heavyball) for
those checks; the published bfloat16 iteration differs from matopt's float32
one by up to ~2.5e-2 of the update's largest entry (measured below).
"""

import functools
import inspect

import heavyball
import heavyball.utils as heavyball_utils
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from pytorch_optimizer import SCION, SCIONLight
from pytorch_optimizer.optimizer import scion as po_scion
from pytorch_optimizer.optimizer.utils.matrix import zero_power_via_newton_schulz_5

import matopt
from matopt.optimizers.scion import DEFAULT_RADII

# Torch layouts (d_out, d_in): tall, wide, square.
SHAPES = [(12, 5), (5, 12), (8, 8)]
ROUND_OFF = 1e-6  # relative to the largest entry, float32, elementwise LMOs
NS_ROUND_OFF = 1e-5  # float32 Newton–Schulz (5 steps amplify round-off to ~2e-6)
BF16_NS = 3e-2  # the published bfloat16 Newton–Schulz against matopt's float32


def _rel(ref, mine) -> float:
  ref, mine = np.asarray(ref, np.float64), np.asarray(mine, np.float64)
  return float(np.max(np.abs(ref - mine)) / np.max(np.abs(ref)))


def _t(x):
  return torch.tensor(np.array(x))


@pytest.fixture
def float32_newton_schulz(monkeypatch):
  """pytorch-optimizer's own Newton–Schulz, at its ``dtype=torch.float32``."""
  monkeypatch.setattr(
    po_scion, "zero_power_via_newton_schulz_5", functools.partial(zero_power_via_newton_schulz_5, dtype=torch.float32)
  )


# --- LMOs, one matrix at a time ---------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
def test_lmos_match_pytorch_optimizer(shape):
  a = np.random.default_rng(sum(shape)).standard_normal(shape).astype(np.float32)
  w = a.T  # matopt's layout
  cases = {
    # reference LMO on A (transposed back)    matopt LMO on W = Aᵀ
    "Col": (po_scion.Col().lmo(_t(a)).numpy().T, matopt.lmo(w, "colnorm")),
    "Row": (po_scion.Row().lmo(_t(a)).numpy().T, matopt.lmo(w, "rownorm")),
    "Row(normalized=False)": (
      po_scion.Row(normalized=False).lmo(_t(a)).numpy().T,
      matopt.lmo(w, "rownorm") * np.sqrt(w.shape[0]),
    ),
    "Sign": (po_scion.Sign().lmo(_t(a)).numpy().T, matopt.lmo(w, "sign", normalized=True)),
    "Sign(normalize=False)": (po_scion.Sign(normalize=False).lmo(_t(a)).numpy().T, matopt.lmo(w, "sign")),
    # An embedding table (vocab, dim) has one layout in both libraries.
    "Col(transpose=True)": (po_scion.Col(transpose=True).lmo(_t(a)).numpy(), matopt.lmo(a, "colnorm")),
  }
  for name, (ref, mine) in cases.items():
    assert _rel(ref, mine) < ROUND_OFF, name
  # The transpose matters: without it ColNorm would be matopt's RowNorm.
  assert _rel(cases["Col"][0], matopt.lmo(w, "rownorm")) > 0.5


@pytest.mark.parametrize("shape", SHAPES)
def test_spectral_lmo_matches_pytorch_optimizer(shape):
  a = np.random.default_rng(sum(shape)).standard_normal(shape).astype(np.float32)
  mine = matopt.lmo(a.T, "spectral")  # √(d_out/d_in) msign(W), Jordan's 5 steps
  # The published bfloat16 iteration: bfloat16 round-off.
  published = po_scion.Spectral().lmo(_t(a)).float().numpy().T
  assert NS_ROUND_OFF < _rel(published, mine) < BF16_NS
  # The same iteration at float32: round-off.
  ns32 = zero_power_via_newton_schulz_5(_t(a), dtype=torch.float32).numpy().T
  assert _rel(ns32 * np.sqrt(shape[0] / shape[1]), mine) < NS_ROUND_OFF


def test_bias_rms_is_colnorm_on_a_row():
  b = np.random.default_rng(0).standard_normal(7).astype(np.float32)
  ref = po_scion.BiasRMS().lmo(_t(b)).numpy()
  assert _rel(ref, matopt.lmo(b[None], "colnorm")[0]) < ROUND_OFF


def test_conv_spectral_scale_departs_by_sqrt_kernel_area(float32_newton_schulz):
  # The reference's SpectralConv: √(c_out/c_in) / (kh·kw) · msign of the
  # (c_out, c_in·kh·kw) unfolding. matopt's "spectral" on the default conv view
  # (fan_in = kh·kw·c_in) scales by √(c_out/(kh·kw·c_in)): √(kh·kw) larger
  # (3 for 3×3), documented in scale_by_lmo's ``norm``.
  k = np.random.default_rng(1).standard_normal((6, 4, 3, 3)).astype(np.float32)  # (c_out, c_in, kh, kw)
  ref = po_scion.SpectralConv().lmo(_t(k))
  flax = jnp.asarray(np.transpose(k, (2, 3, 1, 0)))  # (kh, kw, c_in, c_out)
  tx = matopt.scale_by_lmo("spectral")
  u, _ = tx.update({"conv": {"kernel": flax}}, tx.init({"conv": {"kernel": flax}}))
  mine = np.transpose(np.asarray(u["conv"]["kernel"]), (3, 2, 0, 1))
  assert _rel(3.0 * ref.numpy(), mine) < 1e-5


# --- Whole optimizers over several steps ------------------------------------

VOCAB, DIM, STEPS = 11, 6, 5
# torch name, torch shape, matopt path, role
LEAVES = [
  ("wte", (VOCAB, DIM), ("embed", "embedding"), "embedding"),
  ("h0", (9, DIM), ("h0", "kernel"), "hidden"),  # Linear(6 → 9): tall
  ("h1", (DIM, 9), ("h1", "kernel"), "hidden"),  # Linear(9 → 6): wide
  ("h2", (DIM, DIM), ("h2", "kernel"), "hidden"),
  ("head", (VOCAB, DIM), ("lm_head", "kernel"), "head"),
  ("bias", (VOCAB,), ("lm_head", "bias"), "vector"),
]


def _to_flax(name, x):
  return x if name in ("wte", "bias") else x.T  # embeddings and vectors keep their layout


def _problem(seed=0, dtype=np.float32):
  rng = np.random.default_rng(seed)
  init = {name: rng.standard_normal(shape).astype(dtype) for name, shape, _, _ in LEAVES}
  grads = [{name: rng.standard_normal(shape).astype(dtype) for name, shape, _, _ in LEAVES} for _ in range(STEPS)]
  return init, grads


def _tree(values):
  tree = {}
  for name, _, (module, leaf), _ in LEAVES:
    tree.setdefault(module, {})[leaf] = jnp.asarray(_to_flax(name, values[name]))
  return tree


def _leaf(tree, name):
  _, _, (module, leaf), _ = next(entry for entry in LEAVES if entry[0] == name)
  return _to_flax(name, np.asarray(tree[module][leaf]))


def _run_matopt(tx, init, grads):
  params = _tree(init)
  roles = matopt.labels.by_role(params)
  assert all(roles[module][leaf] == role for _, _, (module, leaf), role in LEAVES)  # as listed
  state = tx.init(params)
  step = jax.jit(tx.update)
  history = []
  for g in grads:
    updates, state = step(_tree(g), state, params)
    params = jax.tree.map(lambda p, u: p + u, params, updates)
    history.append({name: _leaf(params, name) for name, *_ in LEAVES})
  return history


def _run_torch(make, init, grads, *, accumulate=False):
  params = {name: torch.nn.Parameter(_t(value)) for name, value in init.items()}
  opt = make(params)
  history = []
  for g in grads:
    for name, p in params.items():
      # SCIONLight keeps its momentum in p.grad: backward adds the new gradient.
      p.grad = p.grad + _t(g[name]) if accumulate and p.grad is not None else _t(g[name])
    opt.step()
    history.append({name: p.detach().numpy().copy() for name, p in params.items()})
  return history


RADII = DEFAULT_RADII["language"]


def _pytorch_optimizer_groups(params):
  # Scion's language recipe (matopt's "language" defaults): ColNorm on the
  # embedding, Spectral on hidden layers, normalised Sign on the head, BiasRMS.
  return [
    {
      "params": [params["wte"]],
      "norm_type": po_scion.LMONorm.COL,
      "norm_kwargs": {"transpose": True},
      "scale": RADII["embedding"],
    },
    {
      "params": [params[n] for n in ("h0", "h1", "h2")],
      "norm_type": po_scion.LMONorm.SPECTRAL,
      "scale": RADII["hidden"],
    },
    {"params": [params["head"]], "norm_type": po_scion.LMONorm.SIGN, "scale": RADII["head"]},
    {"params": [params["bias"]], "norm_type": po_scion.LMONorm.BIAS, "scale": RADII["vector"]},
  ]


def _assert_histories(ref, mine, tol, spectral_tol=None):
  for t, (r, m) in enumerate(zip(ref, mine)):
    for name, *_, role in LEAVES:
      limit = spectral_tol if spectral_tol is not None and role == "hidden" else tol
      assert _rel(r[name], m[name]) < limit, (t, name, _rel(r[name], m[name]))


LR, ALPHA = 0.01, 0.1  # the references' momentum α, the new gradient's weight
BETA = 1.0 - ALPHA  # matopt's momentum, the decay (its default 0.9)


@functools.cache
def _matopt_language(constrained: bool, seed: int):
  # matopt's own defaults: recipe "language", its radii and momentum β = 1 − α.
  make = matopt.scion if constrained else matopt.unconstrained_scion
  assert BETA == 0.9 == inspect.signature(make).parameters["momentum"].default
  return _run_matopt(make(LR), *_problem(seed))


@pytest.mark.parametrize("constrained", [False, True], ids=["uSCG", "SCG"])
@pytest.mark.parametrize("foreach", [False, True], ids=["per_param", "foreach"])
def test_scion_matches_pytorch_optimizer_scion(constrained, foreach, float32_newton_schulz):
  init, grads = _problem()
  mine = _matopt_language(constrained, 0)
  ref = _run_torch(
    lambda p: SCION(_pytorch_optimizer_groups(p), lr=LR, momentum=ALPHA, constraint=constrained, foreach=foreach),
    init,
    grads,
  )
  _assert_histories(ref, mine, 1e-5)


def test_scion_matches_published_bfloat16_newton_schulz():
  # As published: the hidden layers differ by the bfloat16 iteration only.
  init, grads = _problem()
  mine = _matopt_language(True, 0)
  ref = _run_torch(lambda p: SCION(_pytorch_optimizer_groups(p), lr=LR, momentum=ALPHA, constraint=True), init, grads)
  _assert_histories(ref, mine, 1e-5, spectral_tol=BF16_NS)
  deltas = [_rel(r[n] - init[n], m[n] - init[n]) for r, m in zip(ref, mine) for n in ("h0", "h1", "h2")]
  assert max(deltas) > NS_ROUND_OFF  # bfloat16 visible in the hidden steps, nowhere else


def test_scion_light_matches(float32_newton_schulz):
  # Momentum kept in the gradient buffers (Σ (1−α)^k g = d/α): the same steps.
  init, grads = _problem()
  mine = _matopt_language(False, 0)
  ref = _run_torch(
    lambda p: SCIONLight(_pytorch_optimizer_groups(p), lr=LR, momentum=ALPHA), init, grads, accumulate=True
  )
  _assert_histories(ref, mine, 1e-5)


def test_auto_norm_is_spectral_for_matrices_and_rms_for_vectors(float32_newton_schulz):
  # LMONorm.AUTO in one group: matopt's spectral for every matrix role (the
  # embedding and head included) and ColNorm on the (1, n) row for vectors.
  init, grads = _problem(3)
  tx = matopt.unconstrained_scion(
    LR,
    momentum=BETA,
    norms={"embedding": "spectral", "head": "spectral"},
    radii=dict.fromkeys(matopt.labels.ROLES, 2.0),
  )
  mine = _run_matopt(tx, init, grads)
  # torch's embedding table (vocab, dim) would be read as (d_out, d_in): give
  # the reference the (dim, vocab) torch-Linear layout of the same matrix.
  init_t = dict(init, wte=init["wte"].T.copy())
  grads_t = [dict(g, wte=g["wte"].T.copy()) for g in grads]
  ref = _run_torch(lambda p: SCION(list(p.values()), lr=LR, momentum=ALPHA, scale=2.0), init_t, grads_t)
  for r in ref:
    r["wte"] = r["wte"].T
  _assert_histories(ref, mine, 1e-5)


# heavyball: You Jiacheng's 5-step coefficients, as heavyball.utils.zeropower_via_newtonschulz5 uses them.
HEAVYBALL_NS = [
  (4.0848, -6.8946, 2.9270),
  (3.9505, -6.3029, 2.6377),
  (3.7418, -5.5913, 2.3037),
  (2.8769, -3.1427, 1.2046),
  (2.8366, -3.0525, 1.2012),
]


def test_heavyball_scion_matches(monkeypatch):
  # float64 in both: heavyball skips its stochastic bfloat16 rounding there.
  monkeypatch.setattr(heavyball_utils, "compile_mode", None)  # eager torch (no inductor on CI)
  init, grads = _problem(4, np.float64)
  init["wte"], grads = init["wte"].T.copy(), [dict(g, wte=g["wte"].T.copy()) for g in grads]
  scale = 2.0

  params = {name: torch.nn.Parameter(_t(value)) for name, value in init.items()}
  opt = heavyball.Scion(list(params.values()), lr=LR, betas=(BETA, 0.99), scale=scale, compile_step=False)
  ref = []
  for g in grads:
    for name, p in params.items():
      p.grad = _t(g[name])
    opt.step()
    ref.append({name: p.detach().numpy().copy() for name, p in params.items()})

  # heavyball replaces the parameters by its norm-ball init at the first step;
  # the same published function gives matopt that starting point.
  start = {}
  for index, (name, value) in enumerate(init.items()):
    p = _t(value)
    heavyball_utils.scion_auto_init_param_(p, scale, seed=index)
    start[name] = p.numpy()
  assert _rel(init["h0"], start["h0"]) > 0.5

  with jax.enable_x64(True):
    tx = matopt.unconstrained_scion(
      LR,
      momentum=BETA,
      norms=dict.fromkeys(("embedding", "head"), "spectral"),
      radii=dict.fromkeys(matopt.labels.ROLES, scale),
      coeffs=np.asarray(HEAVYBALL_NS),
    )
    start_flax = dict(start, wte=start["wte"].T)
    mine = _run_matopt(tx, start_flax, [dict(g, wte=g["wte"].T) for g in grads])
  for r in ref:
    r["wte"] = r["wte"].T
  # Not 1e-15: heavyball computes its debiased EMA weight 1 − (1−β)/(1−β^t)
  # in float32 (β ** an int64 step tensor), which tilts d by ~1e-7 (2e-7
  # measured on the bias), and divides by max(‖G‖_F, 1e-7) where matopt
  # divides by ‖G‖_F + 1e-7 (~1e-9).
  _assert_histories(ref, mine, 1e-6)
