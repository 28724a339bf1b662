"""SOAP parity: pytorch-optimizer's ``SOAP`` (4.1.0), a faithful port of Vyas
et al.'s ``soap.py`` (github.com/nikhilvyas/SOAP), run as published on the
inputs matopt gets. It follows the paper-era ``soap.py`` (README usage
``betas=(.95, .95)``, ``precondition_frequency=10``, decay after the update).
One later revision of that file (commit 01df676) is a rewrite in heavyball's
style: debiased betas, ``max(√v, ε)``, the statistics' EMA debiased too,
decay before the update, a warmup, defaults ``betas=(0.9, 0.95)`` and
``precondition_frequency=2``.

Layouts. torch weights are ``(out, in)``, matopt's Flax kernels ``(in, out)``:
every matrix and gradient crosses with a transpose, so the reference's first
statistic (``GG[0]``, over ``out``) is matopt's ``R`` and its second matopt's
``L``.

What the reference does (read from the installed source; the same maths as
the original ``soap.py``): the first ``step()`` only builds ``GG`` and their
``eigh`` bases and leaves the weights alone; from then on, with Adam's count
``k = step - 1``: ``m ← lerp(m, G, 1-β₁)`` in the original coordinates (the
original keeps it rotated and rotates it back and forth around each basis
change: the same numbers), ``v ← lerp(v, (Q_Lᵀ G Q_R)², 1-β₂)``, ``W ← W −
lr·√(1-β₂ᵏ)/(1-β₁ᵏ) · Q_L (Q_Lᵀ m Q_R / (√v + ε)) Q_Rᵀ``, then ``W ← W(1 −
lr·λ)``, then ``GG ← lerp(GG, G Gᵀ, 1-β)`` and, when ``k % frequency == 0``,
one power step + QR of ``GG`` from the old basis sorted by its eigenvalue
estimates, with ``v`` permuted along. Options matopt leaves out: ``merge_dims``
(off; merges small axes into one), ``precondition_1d`` (off; vectors get
Adam), ``normalize_gradient`` (off), ``correct_bias`` (on; matopt always
corrects), ``data_format`` (4-D only). ``max_precondition_dim`` is matopt's
``max_precond_dim``.

The second torch collection, heavyball 3.2.1, has no ``ForeachSOAP`` any more:
its ``SOAP`` (and ``SOAPNAdam``, ``SOAPAdEMAMix``, ``KLSOAP``, ``Heavy*``) is a
reworked SOAP, not a port: debiased betas, a QR refresh that first lifts the
statistic's null space (by ``max(ε, 64·n·u)`` of its largest eigenvalue
estimate) and puts the new columns back in the old order (so ``v`` is not
permuted), a refresh schedule of accumulated probabilities
(``psgd_should_update``), stochastic rounding of low-precision state,
``merge_dims=True``, ``max_precond_dim=2048`` and ``precondition_frequency=2``
by default, and its kernels ``torch.compile``d (``heavyball.utils.compile_mode
= None`` runs them eagerly). Run on a 16×16 gradient with matched options it
is 1e-5 to 3e-5 from pytorch-optimizer before the first refresh, then 2e-4 to
1e-3 apart with a refresh every step and 25% to 50% with one every 3 steps
(measured, not tested: importing and running it costs ~6 s), so it is not
the reference here.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from pytorch_optimizer import SOAP

import matopt

# Flax layouts (in, out). tall/wide rotate only their 8-side
# (MAX_PRECOND_DIM): one gradient's statistics of the long side have rank 8,
# and bases of a null space are arbitrary (see below). square rotates both.
SHAPES = {"tall": (24, 8), "wide": (8, 24), "square": (12, 12), "bias": (8,)}
MAX_PRECOND_DIM = 16
STEPS = 8
BETAS = (0.9, 0.95)
ROUND_OFF = 1e-5  # relative Frobenius error of each leaf's step, float32
EIGENBASIS_ROUND_OFF = 3e-5  # the same where a basis comes from one gradient (square)


def _grads(scale=1.0, seed=0):
  rng = np.random.default_rng(seed)
  return [{k: (scale * rng.standard_normal(s)).astype(np.float32) for k, s in SHAPES.items()} for _ in range(STEPS)]


def _torch(x):
  return torch.tensor(np.ascontiguousarray(x.T))  # (in, out) → (out, in); vectors unchanged


def run_reference(grads, params, *, lr=1.0, weight_decay=0.0, every=3, dtype=torch.float32):
  """The reference's weights after each step (Flax layout), float64 arrays."""
  weights = {k: torch.nn.Parameter(_torch(p).to(dtype)) for k, p in params.items()}
  opt = SOAP(
    list(weights.values()),
    lr=lr,
    betas=BETAS,
    weight_decay=weight_decay,
    precondition_frequency=every,
    max_precondition_dim=MAX_PRECOND_DIM,
    eps=1e-8,
  )
  path = []
  for g in grads:
    for k, w in weights.items():
      w.grad = _torch(g[k]).to(dtype)
    opt.step()
    path.append({k: w.detach().to(torch.float64).numpy().T.copy() for k, w in weights.items()})
  return path


def _soap_direction(every=3):
  return matopt.scale_by_soap(
    b1=BETAS[0],
    b2=BETAS[1],
    eps=1e-8,
    precondition_every=every,
    start_preconditioning_step=1,
    max_precond_dim=MAX_PRECOND_DIM,
  )


def run_matopt(tx, grads, params):
  """matopt's weights after each step, ``optax.apply_updates``."""
  params = {k: jnp.asarray(p, jnp.float32) for k, p in params.items()}
  state, update = tx.init(params), jax.jit(tx.update)
  path = []
  for g in grads:
    u, state = update({k: jnp.asarray(v) for k, v in g.items()}, state, params)
    params = optax.apply_updates(params, u)
    path.append({k: np.asarray(v, np.float64) for k, v in params.items()})
  return path


def _steps(path, start):
  """Per-step displacements ``W_t − W_{t−1}``."""
  before = [start] + path[:-1]
  return [{k: a[k] - b[k] for k in a} for a, b in zip(path, before)]


def _errors(mine, ref):
  """Per step, the largest relative Frobenius error over leaves (0 where both are 0)."""
  out = []
  for a, b in zip(mine, ref):
    out.append(max(float(np.linalg.norm(a[k] - b[k]) / max(np.linalg.norm(b[k]), 1e-30)) for k in a))
  return out


ZERO = {k: np.zeros(s, np.float32) for k, s in SHAPES.items()}


@pytest.fixture(scope="module")
def direction():
  """matopt's SOAP direction as a descent step of learning rate 1, compiled once."""
  return optax.chain(_soap_direction(), optax.scale(-1.0))


def test_steps_match_reference(direction):
  """Round-off agreement. The square leaf rotates both sides with bases of
  one gradient's statistics, whose eigenvalue gaps reach ~1e-3 of λ_max, so
  float32 eigenvectors carry ~u/gap: the reference's own float32 run is
  1.7e-5 from its float64 run there, and matopt's is as close to that."""
  grads = _grads()
  ref = _steps(run_reference(grads, ZERO), ZERO)
  exact = _steps(run_reference(grads, ZERO, dtype=torch.float64), ZERO)
  mine = _steps(run_matopt(direction, grads, ZERO), ZERO)
  assert all(np.all(x == 0) for x in mine[0].values())  # call 1 only builds the bases, as the reference
  errors, own = _errors(mine, ref)[1:], _errors(ref, exact)[1:]
  assert max(errors) < EIGENBASIS_ROUND_OFF, errors  # measured 2.0e-5 (square), ≤ 2.4e-6 (others)
  assert max(_errors(mine, exact)[1:]) < 2 * max(own), (own, errors)  # measured 1.7e-5 and 1.7e-5
  one_sided = lambda path: [{k: d[k] for k in ("tall", "wide", "bias")} for d in path]
  assert max(_errors(one_sided(mine), one_sided(ref))[1:]) < ROUND_OFF  # measured ≤ 2.4e-6


def test_departure_eps_inside_bias_correction(direction):
  """The reference adds ε to √v and multiplies by √(1-β₂ᵏ) afterwards (ε/√(1-β₂ᵏ)
  in Adam's terms); matopt adds ε to √(v/(1-β₂ᵏ)), as optax.adam and
  torch.optim.Adam. Invisible for gradients ≫ ε (test above), 41–166% apart
  for gradients of 1e-8."""
  grads = _grads(scale=1e-8)
  errors = _errors(_steps(run_matopt(direction, grads, ZERO), ZERO), _steps(run_reference(grads, ZERO), ZERO))
  assert max(errors[1:]) > 1e-1, errors  # measured 1.66 at step 2, 0.41 at step 8


def test_departure_weight_decay_order_and_first_step(direction):
  """matopt.soap decays the weights before the update (W ← W − η(u + λW),
  optax.adamw's order) and on every call; the reference skips call 1
  entirely and decays the updated weights, W ← (W − ηu)(1 − ηλ). Applying
  the reference's order to matopt's direction reproduces the reference to
  round-off, so the order is the only difference."""
  lr, wd = 0.1, 0.5  # large, so that the difference is far above round-off
  rng = np.random.default_rng(7)
  start = {k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()}
  grads = _grads(seed=3)
  ref = run_reference(grads, start, lr=lr, weight_decay=wd)
  everything = lambda params: jax.tree.map(lambda _: True, params)
  tx = matopt.soap(
    lr,
    b1=BETAS[0],
    b2=BETAS[1],
    eps=1e-8,
    weight_decay=wd,
    weight_decay_mask=everything,
    precondition_every=3,
    start_preconditioning_step=1,
    max_precond_dim=MAX_PRECOND_DIM,
  )
  mine = run_matopt(tx, grads, start)
  gap = _errors(mine, ref)
  assert gap[0] > 1e-2, gap  # call 1: matopt decays by ηλ = 5%, the reference not at all (5.0–5.3% after)
  # The reference's order on matopt's direction.
  directions = _steps(run_matopt(direction, grads, ZERO), ZERO)  # −u at learning rate 1
  emulated, params = [], start
  for t, d in enumerate(directions, start=1):
    params = {k: (params[k] + lr * d[k]) * (1.0 - lr * wd if t > 1 else 1.0) for k in params}
    emulated.append(params)
  assert max(_errors(emulated, ref)) < ROUND_OFF  # measured ≤ 1.2e-6
