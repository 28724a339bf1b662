"""matopt's Muon family against the implementations published on the package index.

The references run as installed (the ``[parity]`` extra) on the same float32
inputs; torch weights are ``(out, in)`` (conv ``(out, in, kh, kw)``), matopt
kernels ``(in, out)`` (conv ``(kh, kw, in, out)``), so every array is
transposed on the way in and out:

- Keller Jordan's ``muon`` (muon-optimizer 0.1.0): ``zeropower_via_newtonschulz5``,
  ``muon_update``, ``SingleDeviceMuon``;
- ``timm.optim.muon`` (timm 1.0.31): ``Muon`` with ``algo="muon"`` and ``"adamuon"``;
- ``pytorch_optimizer`` 4.1.0: ``Muon``, ``AdaMuon``, ``NorMuon``.

All three run Newton–Schulz in bfloat16 (Jordan's function casts with
``G.bfloat16()``; timm's and pytorch_optimizer's take a ``dtype`` argument,
bfloat16 by default, which their optimizers do not pass). bf16 round-off
(1.5e-2…7e-2 per entry of the result, measured) would hide any departure, so
the trajectory tests run each reference's own Newton–Schulz in float32:
timm's and pytorch_optimizer's through their ``dtype`` argument, Jordan's by
handing it a tensor whose ``.bfloat16()`` keeps the precision (his code
otherwise unchanged). ``test_msign_matches_jordan_in_bf16`` compares with his
unmodified bf16 function at bf16 tolerance.

Trajectories: 5 steps with a new gradient each step (weight decay on), on
tall, wide, square and ill-conditioned (κ = 1e3) matrices and a conv filter
(not for Jordan's SingleDeviceMuon, which cannot step one). The error is the
largest entry of ``ΔW_matopt − ΔW_reference`` over all steps and leaves,
relative to the largest entry of ``ΔW_reference`` (ΔW = W_t − W_0), so it
measures the updates, not the weights; AdaMuon's tests let a few entries
off (see there). Measured errors are in each test's comment.
"""

import functools
import importlib
import importlib.util
import os
import sys
import types

import jax
import jax.numpy as jnp
import muon as jordan
import numpy as np
import optax
import pytest
import torch
from pytorch_optimizer import AdaMuon, NorMuon
from pytorch_optimizer import Muon as PoMuon
from pytorch_optimizer.optimizer.muon import adamuon as po_adamuon
from pytorch_optimizer.optimizer.muon import base as po_base
from pytorch_optimizer.optimizer.muon import normuon as po_normuon
from pytorch_optimizer.optimizer.utils import matrix as po_matrix

import matopt
from tests.helpers import matrix_with_condition


def _load_timm_muon() -> types.ModuleType:
  """Imports ``timm.optim.muon`` without running ``timm/__init__.py``.

  ``import timm`` imports torchvision, whose compiled ops do not load beside
  this torch. The optimizer module needs only ``timm.optim``'s helpers, so
  stub packages ``timm`` and ``timm.optim`` (pointing at the installed
  directories) let it import as published; the stubs are removed afterwards.
  """
  if "timm.optim.muon" in sys.modules:
    return sys.modules["timm.optim.muon"]
  root = os.path.dirname(importlib.util.find_spec("timm").origin)
  added = []
  for name, path in (("timm", root), ("timm.optim", os.path.join(root, "optim"))):
    if name not in sys.modules:
      stub = types.ModuleType(name)
      stub.__path__ = [path]
      sys.modules[name] = stub
      added.append(name)
  try:
    return importlib.import_module("timm.optim.muon")
  finally:
    for name in list(sys.modules):
      if any(name == a or name.startswith(a + ".") for a in added):
        del sys.modules[name]


TIMM = _load_timm_muon()
STEPS = 5
LR = 0.02
# torch (out, in) shapes; "ill" gradients have singular values geomspace(1, 1e-3).
SHAPES = {"tall": (48, 32), "wide": (32, 48), "square": (40, 40), "ill": (48, 32)}
# A conv filter whose flattened view (32, 36) and last two axes (3, 3) both
# give Jordan's factor 1 (see test_jordan_conv_shape_factor... for one where not).
CONV = {"conv": (32, 4, 3, 3)}


class _KeepPrecision(torch.Tensor):
  """A tensor whose ``.bfloat16()`` returns itself: Jordan's iteration in the input's precision."""

  def bfloat16(self, *args, **kwargs):
    del args, kwargs
    return self.as_subclass(torch.Tensor)


def _jordan_float(g: torch.Tensor, steps: int = 5) -> torch.Tensor:
  return jordan.zeropower_via_newtonschulz5(g.as_subclass(_KeepPrecision), steps)


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
  # The 2-core CI machine runs 2 pytest workers: torch's thread pool only
  # adds contention (a 5-step trajectory: 6 s with the default pool, 0.2 s with one thread).
  threads = torch.get_num_threads()
  torch.set_num_threads(1)
  yield
  torch.set_num_threads(threads)


@pytest.fixture
def float32_newton_schulz(monkeypatch):
  """Every reference's Newton–Schulz in float32 (see the module docstring)."""
  original = jordan.zeropower_via_newtonschulz5
  monkeypatch.setattr(
    jordan, "zeropower_via_newtonschulz5", lambda g, steps: original(g.as_subclass(_KeepPrecision), steps)
  )
  monkeypatch.setattr(
    TIMM, "zeropower_via_newtonschulz", functools.partial(TIMM.zeropower_via_newtonschulz, dtype=torch.float32)
  )
  po_float32 = functools.partial(po_matrix.zero_power_via_newton_schulz_5, dtype=torch.float32)
  for module in (po_base, po_adamuon, po_normuon):
    monkeypatch.setattr(module, "zero_power_via_newton_schulz_5", po_float32)


def _to_flax(x: np.ndarray) -> np.ndarray:
  return x.T if x.ndim == 2 else np.transpose(x, (2, 3, 1, 0))


def _to_torch(x: np.ndarray) -> np.ndarray:
  return x.T if x.ndim == 2 else np.transpose(x, (3, 2, 0, 1))


def _problem(shapes: dict, grad_norm: float | None = None, seed: int = 0):
  """Initial weights and STEPS gradients per leaf, torch layout, float32.

  ``grad_norm``: each gradient's Frobenius norm times a factor in [0.5, 2]
  (None: unscaled, ‖G‖_F ≈ 40).
  """
  rng = np.random.default_rng(seed)
  w0 = {k: (0.1 * rng.standard_normal(s)).astype(np.float32) for k, s in shapes.items()}

  def grad(k, s, t):
    g = matrix_with_condition(*s, 1e3, seed=seed + t) if k == "ill" else rng.standard_normal(s)
    factor = rng.uniform(0.5, 2.0)
    return g * factor * (1.0 if grad_norm is None else grad_norm / np.linalg.norm(g))

  grads = [{k: grad(k, s, t).astype(np.float32) for k, s in shapes.items()} for t in range(STEPS)]
  return w0, grads


def _torch_trajectory(make, w0, grads):
  params = {k: torch.nn.Parameter(torch.tensor(v)) for k, v in w0.items()}
  opt = make(list(params.values()))
  out = []
  for g in grads:
    for k, p in params.items():
      p.grad = torch.tensor(g[k])
    opt.step()
    out.append({k: p.detach().numpy().copy() for k, p in params.items()})
  return out


def _hidden(params):
  return jax.tree.map(lambda _: "hidden", params)


def _matopt_trajectory(tx, step, w0, grads):
  params = {k: jnp.asarray(_to_flax(v)) for k, v in w0.items()}
  state = tx.init(params)
  out = []
  for g in grads:
    updates, state = step({k: jnp.asarray(_to_flax(v)) for k, v in g.items()}, state, params)
    params = optax.apply_updates(params, updates)
    out.append({k: _to_torch(np.asarray(v)) for k, v in params.items()})
  return out


def _relative_errors(ours, theirs, w0, outliers: int = 0) -> tuple[float, float]:
  """``(error, outlier error)``: max |ΔW_ours − ΔW_theirs| / max |ΔW_theirs|.

  The first leaves out the ``outliers`` entries (leaf, index) whose
  difference over the steps is largest; the second is over all entries.
  """
  diffs = np.concatenate([np.max([np.abs(a[k] - b[k]) for a, b in zip(ours, theirs)], axis=0).ravel() for k in w0])
  diffs = np.sort(diffs)
  size = max(float(np.max(np.abs(b[k] - w0[k]))) for b in theirs for k in w0)
  return float(diffs[len(diffs) - 1 - outliers]) / size, float(diffs[-1]) / size


def _compare(
  tx,
  references: dict,
  shapes: dict,
  tol: float,
  leaves: dict | None = None,
  grad_norms: tuple = (None,),
  outliers: int = 0,
  outlier_tol: float = 0.0,
) -> None:
  """Asserts matopt's trajectory is within ``tol`` of each reference's (relative, see above).

  ``leaves`` names, per reference, the leaves it runs (default: all); leaves
  are independent, so one matopt run serves every reference. Each of
  ``grad_norms`` is a separate run (see :func:`_problem`), one compilation.
  Up to ``outliers`` entries may differ by up to ``outlier_tol`` instead.
  """
  step = jax.jit(tx.update)
  errors = {}
  for grad_norm in grad_norms:
    w0, grads = _problem(shapes, grad_norm)
    ours = _matopt_trajectory(tx, step, w0, grads)
    for name, make in references.items():
      keep = (leaves or {}).get(name, tuple(w0))
      sub = lambda tree, keep=keep: {k: tree[k] for k in keep}
      theirs = _torch_trajectory(make, sub(w0), [sub(g) for g in grads])
      errors[name, grad_norm] = _relative_errors([sub(o) for o in ours], theirs, sub(w0), outliers)
  print("relative trajectory errors (rest, all):", {k: f"{a:.1e}, {b:.1e}" for k, (a, b) in errors.items()})
  assert max(a for a, _ in errors.values()) < tol, errors
  assert max(b for _, b in errors.values()) < max(tol, outlier_tol), errors


# --- msign against zeropower_via_newtonschulz5 --------------------------------------------


def _msign_inputs():
  for name, shape in SHAPES.items():
    g = matrix_with_condition(*shape, 1e3, seed=3) if name == "ill" else np.random.default_rng(3).standard_normal(shape)
    yield name, g / np.linalg.norm(g)


@pytest.mark.parametrize("norm", [1.0, 1e-2, 1e-4, 1e-8])
def test_msign_matches_jordan_newton_schulz(norm):
  # Jordan's function evaluated in float64 (his operations, precision kept)
  # against matopt's float32 msign, at ‖G‖_F = norm, error relative to the
  # largest entry. Before matopt divided by ‖X‖_F + 1e-7·max|X| instead of
  # ‖X‖_F + 1e-7 this was 3e-6, 2e-5, 2e-3 and 0.8 at norms 1, 1e-2, 1e-4,
  # 1e-8; now 4e-6, 7e-6, 3e-6, 1e-6 (measured; the largest on κ = 1e3).
  for name, g in _msign_inputs():
    x = (g * norm).astype(np.float32)
    theirs = _jordan_float(torch.tensor(x.T, dtype=torch.float64)).numpy().T
    ours = np.asarray(matopt.msign(jnp.asarray(x)), np.float64)
    err = np.max(np.abs(ours - theirs)) / np.max(np.abs(theirs))
    assert err < 2e-5, (name, norm, err)


def test_msign_clamp_of_timm_and_pytorch_optimizer_is_eps_zero():
  # timm's zeropower_via_newtonschulz and pytorch_optimizer's
  # zero_power_via_newton_schulz_5 divide by max(‖X‖_F, ε), not ‖X‖_F + ε:
  # matopt's eps=0 wherever ‖X‖_F ≥ ε (both run here in float64 through their
  # dtype argument). At ‖X‖_F = 1e-4 the default ε = 1e-7 moves the result by
  # 1.6e-3…2e-3 of its largest entry (measured), far above the parity error.
  abc = [(3.4445, -4.7750, 2.0315)]
  for name, g in _msign_inputs():
    for norm in (1.0, 1e-4):
      x = (g * norm).astype(np.float32)
      t = torch.tensor(x.T, dtype=torch.float64)
      timm = TIMM.zeropower_via_newtonschulz(t, 5, abc, dtype=torch.float64).numpy().T
      po = po_matrix.zero_power_via_newton_schulz_5(t, num_steps=5, weights=abc, dtype=torch.float64).numpy().T
      ours = np.asarray(matopt.msign(jnp.asarray(x), eps=0.0), np.float64)
      for theirs in (timm, po):
        assert np.max(np.abs(ours - theirs)) / np.max(np.abs(theirs)) < 2e-5, (name, norm)
      if norm < 1.0:
        default = np.asarray(matopt.msign(jnp.asarray(x)), np.float64)
        assert np.max(np.abs(default - timm)) / np.max(np.abs(timm)) > 2e-4, name


def test_msign_matches_jordan_in_bf16():
  # His function unmodified (bf16 iteration) against matopt's float32 msign:
  # the difference is bf16 round-off, as large as his own bf16 result's
  # distance to his float64 one (both measured 0.031…0.037 of the Frobenius
  # norm on random inputs, 0.116…0.121 at κ = 1e3). This bound cannot see a
  # departure below bf16's resolution: test_msign_matches_jordan_newton_schulz does.
  for name, g in _msign_inputs():
    for norm in (1.0, 1e-4):
      x = (g * norm).astype(np.float32)
      theirs16 = jordan.zeropower_via_newtonschulz5(torch.tensor(x.T), 5).float().numpy().T
      theirs64 = _jordan_float(torch.tensor(x.T, dtype=torch.float64)).numpy().T
      ours = np.asarray(matopt.msign(jnp.asarray(x)), np.float64)
      bf16_noise = np.linalg.norm(theirs16 - theirs64) / np.linalg.norm(theirs64)
      err = np.linalg.norm(ours - theirs16) / np.linalg.norm(theirs16)
      assert bf16_noise < 0.15 and err < 1.05 * bf16_noise, (name, norm, err, bf16_noise)


# --- Muon ---------------------------------------------------------------------------------


def test_muon_jordan_timm_pytorch_optimizer(float32_newton_schulz):
  # One matopt configuration, Jordan's defaults (Nesterov, β = 0.95, his
  # quintic, √max(1, rows/cols), decoupled decay), against all three
  # references. They keep an EMA momentum; matopt sums M = βM + G and
  # hands (1−β)·N to msign, the same matrix. Jordan's SingleDeviceMuon runs
  # the matrices only: on a conv filter it raises (muon_update returns the
  # flattened (out, in·kh·kw) view, which p.add_ cannot add to the 4-D
  # weight); its conv update is checked through muon_update below.
  # Measured: 3.1e-6 for each reference.
  del float32_newton_schulz
  tx = matopt.muon(LR, momentum=0.95, nesterov=True, scale="shape", weight_decay=0.1, labels=_hidden)
  references = {
    "jordan": lambda ps: jordan.SingleDeviceMuon(ps, lr=LR, weight_decay=0.1, momentum=0.95),
    "timm": lambda ps: TIMM.Muon(
      ps,
      lr=LR,
      momentum=0.95,
      nesterov=True,
      ns_coefficients="original",
      adjust_lr_fn="original",
      weight_decay=0.1,
      algo="muon",
    ),
    "pytorch_optimizer": lambda ps: PoMuon(
      [{"params": ps, "use_muon": True}],
      lr=LR,
      momentum=0.95,
      nesterov=True,
      ns_coeffs="original",
      use_adjusted_lr=False,
      weight_decay=0.1,
    ),
  }
  _compare(tx, references, SHAPES | CONV, 2e-5, leaves={"jordan": tuple(SHAPES)})
  # At ‖G‖_F ≈ 1e-4 and 1e-6 Jordan's ε = 1e-7 (added to ‖N‖_F, N his EMA
  # momentum, ≈ 1e-5 and 1e-7 here) changes the update by ~1e-2 and more:
  # matopt adds the same ε to the same matrix. Measured 3e-6 at both;
  # before, 8.8e-3 and 0.19 (msign added ε·max|X| to ‖X‖_F, and muon fed it
  # its summed momentum, 1/(1−β) = 20 times the EMA), still 8.4e-3 and 0.19
  # with the msign fix alone. timm and pytorch_optimizer divide
  # by max(‖N‖_F, ε) instead: matopt's eps=0, see
  # test_msign_clamp_of_timm_and_pytorch_optimizer_is_eps_zero.
  _compare(
    tx, {"jordan": references["jordan"]}, SHAPES | CONV, 2e-5, leaves={"jordan": tuple(SHAPES)}, grad_norms=(1e-4, 1e-6)
  )


def test_muon_rms_scale_and_schedule_timm_pytorch_optimizer(float32_newton_schulz):
  # No Nesterov, a 5-row coefficient schedule (modded-nanogpt's, both
  # references' "quintic") and Moonlight's 0.2·√max(rows, cols) (timm's
  # "match_rms_adamw", pytorch_optimizer's use_adjusted_lr): matopt's
  # explicit coeffs array and scale="rms". Both references take the factor
  # from the flattened matrix they orthogonalise, as matopt does.
  del float32_newton_schulz
  quintic = TIMM._COEFFICIENTS["quintic"]
  assert quintic == po_matrix.NS_COEFFICIENTS["quintic"]
  tx = matopt.muon(
    LR, momentum=0.95, nesterov=False, coeffs=np.asarray(quintic), scale="rms", weight_decay=0.1, labels=_hidden
  )
  references = {
    "timm": lambda ps: TIMM.Muon(
      ps,
      lr=LR,
      momentum=0.95,
      nesterov=False,
      ns_coefficients="quintic",
      adjust_lr_fn="match_rms_adamw",
      weight_decay=0.1,
      algo="muon",
    ),
    "pytorch_optimizer": lambda ps: PoMuon(
      [{"params": ps, "use_muon": True}],
      lr=LR,
      momentum=0.95,
      nesterov=False,
      ns_coeffs="quintic",
      use_adjusted_lr=True,
      weight_decay=0.1,
    ),
  }
  _compare(tx, references, SHAPES | CONV, 2e-5)


def test_jordan_conv_shape_factor_is_the_kernels_last_two_axes(float32_newton_schulz):
  # muon_update orthogonalises a conv filter's flattened (out, in·kh·kw)
  # view but takes its factor from the 4-D grad's last two axes,
  # max(1, kh/kw)^0.5 = 1 for a (64, 4, 3, 3) filter; matopt's "shape" takes
  # the factor of the matrix it orthogonalises, √(64/36) = 4/3 (as timm and
  # pytorch_optimizer do). Otherwise the updates agree (measured 1.5e-6 of
  # entries up to 0.33).
  del float32_newton_schulz
  grad = np.random.default_rng(5).standard_normal((64, 4, 3, 3)).astype(np.float32)
  theirs = jordan.muon_update(torch.tensor(grad), torch.zeros(grad.shape), beta=0.95).numpy().reshape(grad.shape)
  params = {"conv": jnp.zeros(_to_flax(grad).shape)}
  tx = matopt.muon(1.0, scale="shape", labels=_hidden)
  updates, _ = tx.update({"conv": jnp.asarray(_to_flax(grad))}, tx.init(params), params)
  ours = -_to_torch(np.asarray(updates["conv"]))
  np.testing.assert_allclose(ours, 4.0 / 3.0 * theirs, rtol=0, atol=5e-6)


# --- AdaMuon ------------------------------------------------------------------------------
#
# Both references implement AdaMuon's first version (msign of the momentum,
# a separate second-moment rate b2); neither the current reference code's
# msign(sign(N)) with b2 = momentum. AdaMuon divides each entry of O by its
# own RMS, √V ≈ √(1−b2)·|O| at first: an entry where |O| is within a few
# orders of ε is nearly sign(O)·const there, so its float32 round-off
# (1e-8) becomes a change of percents. Such isolated entries (1 to 3 of the
# 7,360 here) reach up to 1.8e-2 of the update (measured); the tolerance
# holds for all other entries, and those few get 0.05.


def test_adamuon_pytorch_optimizer_and_timm(float32_newton_schulz):
  # pytorch_optimizer's AdaMuon (its only form: EMA momentum at betas[0],
  # no Nesterov, Adam's bias correction — matopt's default) and timm's
  # algo="adamuon" at the same options. timm skips the bias correction;
  # at ε = 1e-10 that changes no entry measurably. Measured (all but 3
  # entries; all): 4.9e-6, 1.3e-5 (pytorch_optimizer); 6.3e-6, 4.6e-5 (timm).
  del float32_newton_schulz
  tx = matopt.adamuon(
    LR, b2=0.95, eps=1e-10, momentum=0.9, nesterov=False, scale="rms", weight_decay=0.1, labels=_hidden
  )
  references = {
    "pytorch_optimizer": lambda ps: AdaMuon(
      [{"params": ps, "use_muon": True}], lr=LR, betas=(0.9, 0.95), eps=1e-10, use_adjusted_lr=True, weight_decay=0.1
    ),
    "timm": lambda ps: TIMM.Muon(
      ps,
      lr=LR,
      momentum=0.9,
      nesterov=False,
      ns_coefficients="original",
      eps=1e-10,
      adjust_lr_fn="match_rms_adamw",
      betas=(0.9, 0.95),
      weight_decay=0.1,
      algo="adamuon",
    ),
  }
  _compare(tx, references, SHAPES | CONV, 2e-5, outliers=3, outlier_tol=0.05)


def test_adamuon_without_bias_correction_timm(float32_newton_schulz):
  # timm's defaults: Nesterov, one ε = 1e-7 for Newton–Schulz and the
  # adaptive step, no bias correction: matopt's bias_correction=False (b2
  # equals the momentum here, the current version's rule; only its sign()
  # is missing). Measured 1.2e-5 (all but 3 entries), 1.8e-2 (all). With the
  # correction the same run differs by 3e-4 (all but 3): at ε = 1e-7 the
  # correction's √(1 − b2^t) moves ε against entries of O near 1e-6.
  del float32_newton_schulz
  tx = matopt.adamuon(
    LR,
    b2=0.95,
    eps=1e-7,
    bias_correction=False,
    momentum=0.95,
    nesterov=True,
    scale="rms",
    weight_decay=0.1,
    labels=_hidden,
  )
  reference = lambda ps: TIMM.Muon(
    ps,
    lr=LR,
    momentum=0.95,
    nesterov=True,
    ns_coefficients="original",
    adjust_lr_fn="match_rms_adamw",
    betas=(0.9, 0.95),
    weight_decay=0.1,
    algo="adamuon",
  )
  _compare(tx, {"timm": reference}, SHAPES | CONV, 2e-5, outliers=3, outlier_tol=0.05)


# --- NorMuon ------------------------------------------------------------------------------


def test_normuon_pytorch_optimizer(float32_newton_schulz):
  # Its defaults, which are the official code's and matopt's: Nesterov,
  # β = b2 = 0.95, ε = 1e-10, √max(1, rows/cols), update_scale="preserve_norm"
  # (the row-normalised update keeps the orthogonalised one's Frobenius norm).
  del float32_newton_schulz
  tx = matopt.normuon(LR, weight_decay=0.1, labels=_hidden)
  reference = lambda ps: NorMuon([{"params": ps, "use_muon": True}], lr=LR, weight_decay=0.1)
  _compare(tx, {"pytorch_optimizer": reference}, SHAPES | CONV, 2e-5)
