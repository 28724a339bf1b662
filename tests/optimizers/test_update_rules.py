"""Each optimizer's update, several steps, against a numpy transcription."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest

import matopt
from tests.linalg.test_operator_norms import paper_lmo

STEPS = 3


def jordan_newton_schulz(g, steps=5, eps=1e-7):
  """Numpy transcription of Jordan et al.'s zeropower_via_newtonschulz5."""
  a, b, c = 3.4445, -4.7750, 2.0315
  x = g / (np.linalg.norm(g) + eps)
  tall = x.shape[0] > x.shape[1]
  if tall:
    x = x.T
  for _ in range(steps):
    gram = x @ x.T
    x = a * x + (b * gram + c * gram @ gram) @ x
  return x.T if tall else x


def _problem(seed=0):
  rng = np.random.default_rng(seed)
  params = {
    "Embed_0": {"embedding": rng.standard_normal((10, 6))},
    "Dense_0": {"kernel": rng.standard_normal((6, 12)), "bias": rng.standard_normal(12)},
    "head": {"kernel": rng.standard_normal((12, 10))},
  }
  grads = [
    {k: {n: rng.standard_normal(v.shape) for n, v in d.items()} for k, d in params.items()} for _ in range(STEPS)
  ]
  return params, grads


def _run(tx, params, grads):
  f32 = lambda t: {k: {n: jnp.asarray(v, jnp.float32) for n, v in d.items()} for k, d in t.items()}
  p = f32(params)
  state = tx.init(p)
  for g in grads:
    u, state = tx.update(f32(g), state, p)
    p = optax.apply_updates(p, u)
  return {k: {n: np.asarray(v, np.float64) for n, v in d.items()} for k, d in p.items()}


def _adamw(w, gs, lr, b1, b2, eps, wd):
  m = np.zeros_like(w)
  v = np.zeros_like(w)
  for t, g in enumerate(gs, start=1):
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    mh, vh = m / (1 - b1**t), v / (1 - b2**t)
    w = w - lr * (mh / (np.sqrt(vh) + eps) + wd * w)
  return w


@pytest.mark.parametrize("nesterov", [True, False])
@pytest.mark.parametrize("scale", ["shape", "rms"])
def test_muon(nesterov, scale):
  params, grads = _problem()
  lr, beta, wd, adam_lr = 0.02, 0.95, 0.1, 3e-3
  got = _run(
    matopt.muon(lr, momentum=beta, nesterov=nesterov, scale=scale, weight_decay=wd, adam_learning_rate=adam_lr),
    params,
    grads,
  )
  w = params["Dense_0"]["kernel"].copy()
  buf = np.zeros_like(w)
  fan_in, fan_out = w.shape
  s = np.sqrt(max(1, fan_out / fan_in)) if scale == "shape" else 0.2 * np.sqrt(max(fan_in, fan_out))
  for g in grads:
    g = g["Dense_0"]["kernel"]
    buf = beta * buf + g
    direction = g + beta * buf if nesterov else buf
    w = w - lr * (s * jordan_newton_schulz(direction) + wd * w)
  np.testing.assert_allclose(got["Dense_0"]["kernel"], w, atol=2e-5)
  for k, n in [("Embed_0", "embedding"), ("Dense_0", "bias"), ("head", "kernel")]:
    # weight_decay reaches matrices, not the bias (the default decay mask).
    ref = _adamw(params[k][n], [g[k][n] for g in grads], adam_lr, 0.9, 0.95, 1e-10, wd if n != "bias" else 0.0)
    np.testing.assert_allclose(got[k][n], ref, atol=2e-5)


@pytest.mark.parametrize("variant", ["normuon", "adamuon", "adamuon_sign"])
def test_normuon_and_adamuon_match_reference_code(variant):
  # Transcribed in PyTorch's (out, in) layout from zichongli5/NorMuon
  # (normuon_update) and Chongjie-Si/AdaMuon (adamuon.py); our kernel is Wᵀ.
  # adamuon_sign: the paper's v2 algorithm, Newton–Schulz of sign(momentum).
  params, grads = _problem(2)
  lr, beta, beta2, wd = 0.02, 0.95, 0.9, 0.1
  factory = matopt.normuon if variant == "normuon" else matopt.adamuon
  options = {"sign_momentum": True} if variant == "adamuon_sign" else {}
  got = _run(factory(lr, momentum=beta, b2=beta2, weight_decay=wd, adam_learning_rate=3e-3, **options), params, grads)
  p = params["Dense_0"]["kernel"].T.copy()
  buf, v = np.zeros_like(p), None
  for t, g in enumerate(grads, start=1):
    g = g["Dense_0"]["kernel"].T
    buf = buf + (1 - beta) * (g - buf)  # buf.lerp_(g, 1 - beta)
    n = g + beta * (buf - g)  # g.lerp_(buf, beta), Nesterov
    u = jordan_newton_schulz(np.sign(n) if variant == "adamuon_sign" else n)
    if variant == "normuon":
      vnorm = np.linalg.norm(u)
      v_mean = np.mean(u * u, axis=-1, keepdims=True)
      v = v_mean * (1 - beta2) if v is None else v + (1 - beta2) * (v_mean - v)
      u = u / (np.sqrt(v) + 1e-10)
      u = u * vnorm / (np.linalg.norm(u) + 1e-10)
      u = u * max(1, p.shape[0] / p.shape[1]) ** 0.5
    else:
      v = (1 - beta2) * u * u if v is None else beta2 * v + (1 - beta2) * u * u
      u = u / (np.sqrt(v / (1 - beta2**t)) + 1e-8)
      u = u * np.sqrt(min(p.shape)) / (np.linalg.norm(u) + 1e-8)
      u = u * 0.2 * np.sqrt(max(p.shape))
    p = p * (1 - lr * wd) - lr * u
  np.testing.assert_allclose(got["Dense_0"]["kernel"], p.T, atol=2e-5)


@pytest.mark.parametrize("constrained", [True, False])
def test_scion(constrained):
  params, grads = _problem(1)
  lr, beta = 0.01, 0.7
  alpha = 1 - beta  # the paper's weight of the new gradient
  radii = {"embedding": 2.0, "hidden": 3.0, "head": 50.0, "vector": 1.5}
  factory = matopt.scion if constrained else matopt.unconstrained_scion
  got = _run(factory(lr, momentum=beta, radii=radii, coeffs="polar_express", ns_steps=12), params, grads)
  leaves = {
    ("Embed_0", "embedding"): ("embedding", "colnorm"),
    ("Dense_0", "kernel"): ("hidden", "spectral"),
    ("Dense_0", "bias"): ("vector", "colnorm"),
    ("head", "kernel"): ("head", "sign"),
  }
  for (k, n), (role, norm) in leaves.items():
    w = params[k][n].copy()
    d = np.zeros_like(w)
    for g in grads:
      d = (1 - alpha) * d + alpha * g[k][n]
      # Paper layout A = Wᵀ; a bias is the (1, n) row of a constant input.
      direction = paper_lmo(np.atleast_2d(d).T, norm).T.reshape(w.shape)
      if norm == "sign":
        direction = direction / w.shape[0]  # the reference's normalised Sign
      w = (1 - lr) * w - lr * radii[role] * direction if constrained else w - lr * radii[role] * direction
    np.testing.assert_allclose(got[k][n], w, atol=1e-4, err_msg=f"{k}/{n}")


def test_signum_nsgd_clipped():
  params, grads = _problem(2)
  lr, beta, wd = 0.01, 0.9, 0.05
  flat = lambda t: [t[k][n] for k in sorted(t) for n in sorted(t[k])]
  for name, tx, direction in [
    ("signum", matopt.signum(lr, momentum=beta, weight_decay=wd), lambda ms: [np.sign(m) for m in ms]),
    (
      "nsgd",
      matopt.nsgd(lr, momentum=beta, weight_decay=wd),
      lambda ms: [m / np.sqrt(sum(np.sum(x * x) for x in ms)) for m in ms],
    ),
    (
      "clipped_sgd",
      matopt.clipped_sgd(lr, max_norm=0.5, momentum=beta, weight_decay=wd),
      lambda ms: [m * min(1.0, 0.5 / np.sqrt(sum(np.sum(x * x) for x in ms))) for m in ms],
    ),
  ]:
    got = flat(_run(tx, params, grads))
    ws = [w.copy() for w in flat(params)]
    ms = [np.zeros_like(w) for w in ws]
    for g in grads:
      ms = [beta * m + (1 - beta) * x for m, x in zip(ms, flat(g))]
      ws = [w - lr * (d + wd * (w.ndim > 1) * w) for w, d in zip(ws, direction(ms))]  # no decay on the bias
    for a, b in zip(got, ws):
      np.testing.assert_allclose(a, b, atol=1e-5, err_msg=name)


@pytest.mark.parametrize(
  "build, match",
  [
    (lambda: matopt.muon(0.02, momentum=1.0), r"momentum must lie in \[0.0, 1.0\)"),
    (lambda: matopt.muon(0.02, scale="spectral"), "valid scales are"),
    (lambda: matopt.muon(0.02, coeffs="fast"), "valid presets are"),
    (lambda: matopt.muon(0.02, weight_decay=-1.0), "weight_decay must lie in"),
    (lambda: matopt.scion(0.1, momentum=1.0), r"momentum must lie in \[0.0, 1.0\)"),
    (lambda: matopt.muon(0.02, ns_steps=0), r"ns_steps must be >= 1, got 0"),
    (
      lambda: matopt.scion(0.1, ns_steps=2.5),
      r"ns_steps must be a positive int or None \(the coeffs preset's default\)",
    ),
    (lambda: matopt.scion(0.1, recipe="audio"), "valid recipes are"),
    (lambda: matopt.scion(0.1, norms={"hiden": "spectral"}), r"norms has unknown roles \['hiden'\]"),
    (lambda: matopt.scion(0.1, norms={"hidden": "l2"}), "valid norms are"),
    (lambda: matopt.unconstrained_scion(0.1, radii={"head": 0.0}), r"radii\['head'\] must lie in"),
    (lambda: matopt.signum(0.1, momentum=-0.1), "momentum must lie in"),
    (lambda: matopt.nsgd(0.1, scope="row"), "valid scopes are"),
    (lambda: matopt.clipped_sgd(0.1, max_norm=-1.0), "max_norm must lie in"),
    (lambda: matopt.muon(0.02, momentum="high"), "momentum must be a number"),
  ],
)
def test_construction_errors(build, match):
  with pytest.raises(ValueError, match=match):
    build()


def test_unknown_role_label_names_leaf():
  params = {"w": jnp.ones((3, 3))}
  tx = matopt.muon(0.02, labels=lambda p: {"w": "attention"})
  with pytest.raises(ValueError, match=r"Leaf 'w' has label 'attention'"):
    tx.init(params)


@pytest.mark.parametrize(
  "build, direction",
  [
    (
      lambda lr, wd: matopt.shampoo(lr, weight_decay=wd, precondition_every=1),
      lambda: matopt.scale_by_shampoo(precondition_every=1, b1=0.95, beta=0.95, eps=1e-12),
    ),
    (
      lambda lr, wd: matopt.soap(lr, weight_decay=wd, precondition_every=1),
      lambda: matopt.scale_by_soap(precondition_every=1),
    ),
  ],
  ids=["shampoo", "soap"],
)
def test_preconditioners_decay_decoupled_and_partition_by_role(build, direction):
  params, grads = _problem(3)
  lr, wd = 0.01, 0.1
  got = _run(build(lr, wd), params, grads)
  # W ← W − η (u + λ W), with u from the bare transform on the same gradients
  # (λ = 0 for the bias: weight_decay's default mask).
  f32 = lambda t: {k: {n: jnp.asarray(v, jnp.float32) for n, v in d.items()} for k, d in t.items()}
  tx = direction()
  p = f32(params)
  state = tx.init(p)
  for g in grads:
    u, state = tx.update(f32(g), state, p)
    p = {k: {n: w - lr * (u[k][n] + wd * (w.ndim > 1) * w) for n, w in d.items()} for k, d in p.items()}
  for k, d in p.items():
    for n, w in d.items():
      np.testing.assert_allclose(got[k][n], w, atol=1e-5, err_msg=f"{k}/{n}")
  # Per role: the preconditioner on hidden matrices, AdamW elsewhere.
  adamw = optax.adamw(0.003, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.0)
  routed = matopt.partition(
    {"hidden": build(lr, wd), "embedding": adamw, "head": adamw, "vector": adamw}, matopt.labels.by_role
  )
  got = _run(routed, params, grads)
  np.testing.assert_allclose(got["Dense_0"]["kernel"], p["Dense_0"]["kernel"], atol=1e-5)
  for k, n in [("Embed_0", "embedding"), ("head", "kernel"), ("Dense_0", "bias")]:
    want = _adamw(params[k][n], [g[k][n] for g in grads], 0.003, 0.9, 0.95, 1e-8, 0.0)
    np.testing.assert_allclose(got[k][n], want, atol=1e-5, err_msg=f"{k}/{n}")
