"""Every public optimizer under the plain ``optax.inject_hyperparams(f)(learning_rate=...)``.

inject_hyperparams binds every numeric argument, defaults included, as an
array (a tracer under jit) and calls every callable as a schedule of the step:
numeric options must accept traced values, and callable-valued options
(label functions, dimension numbers, decay masks) must refuse to be scheduled,
naming ``static_args``.
"""

import inspect
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import matopt


class Case(NamedTuple):
  factory: object
  learning_rate: float
  # The option holding the momentum, and two values it is scheduled between.
  momentum: str = "momentum"
  momenta: tuple[float, float] = (0.5, 0.9)
  # update() needs the model's attention logits (QK-clip).
  max_logits: bool = False
  # Options that fix shapes: given through static_args, as a user must.
  static: dict = {}  # noqa: RUF012 (a NamedTuple field's default, never mutated)


# One line per optimizer of matopt.OPTIMIZERS (test_cases_cover_the_registry).
CASES = {
  "muon": Case(matopt.muon, 0.02),
  "normuon": Case(matopt.normuon, 0.02),
  "adamuon": Case(matopt.adamuon, 0.02),
  "muon_clip": Case(matopt.muon_clip, 0.02, max_logits=True, static={"head_dim": 4}),
  "scion": Case(matopt.scion, 0.05),
  "unconstrained_scion": Case(matopt.unconstrained_scion, 0.05),
  "signum": Case(matopt.signum, 0.01),
  "nsgd": Case(matopt.nsgd, 0.1),
  "clipped_sgd": Case(matopt.clipped_sgd, 0.1),
  "shampoo": Case(matopt.shampoo, 1e-3, momentum="b1"),
  "soap": Case(matopt.soap, 3e-3, momentum="b1"),
}
NAMES = sorted(CASES)
# Callable-valued options: what inject_hyperparams would wrongly call as a schedule.
CALLABLE_OPTIONS = {
  "labels": matopt.labels.by_role,
  # None for a scalar (the step count): indistinguishable from the default by value.
  "dimension_numbers": lambda p: jax.tree.map(lambda x: None, p),
  "weight_decay_mask": lambda p: jax.tree.map(lambda x: x.ndim > 1, p),
}


def test_cases_cover_the_registry():
  assert sorted(CASES) == sorted(matopt.OPTIMIZERS), "one Case per registered optimizer"


def _normal(shape, seed):
  return jax.random.normal(jax.random.key(seed), shape)


def _tree():
  """Embedding, a tall and a wide hidden matrix with a bias, a norm scale, a head, and attention."""
  params = {
    "embed": {"embedding": _normal((12, 6), 0)},
    "Dense_0": {"kernel": _normal((6, 10), 1), "bias": _normal((10,), 2)},
    "Dense_1": {"kernel": _normal((10, 7), 3)},
    "LayerNorm_0": {"scale": 1.0 + 0.1 * _normal((7,), 4)},
    "attn": {"query": {"kernel": _normal((7, 8), 5)}, "key": {"kernel": _normal((7, 8), 6)}},
    "head": {"kernel": _normal((7, 5), 7)},
  }
  grads = jax.tree.map(lambda w: _normal(w.shape, 100 + w.size), params)
  return params, grads


def _grads(grads, k):
  """Step k's gradients: independent directions, so that a momentum's weight shows in every update."""
  leaves, treedef = jax.tree.flatten(grads)
  return treedef.unflatten([_normal(g.shape, 1000 * k + i) for i, g in enumerate(leaves)])


def _extra(case):
  # Two heads of width 4; the second one's logit exceeds τ = 100, so it is clipped.
  return {"max_logits": {"attn": jnp.array([50.0, 400.0])}} if case.max_logits else {}


def _inject(case, static_args=(), **options):
  static = {**case.static, **options}
  return optax.inject_hyperparams(case.factory, static_args=(*case.static, *static_args))(
    learning_rate=case.learning_rate, **static
  )


def _plain(case, **options):
  return case.factory(case.learning_rate, **case.static, **options)


def _steps(tx, params, grads, n, extra):
  state = tx.init(params)
  update = jax.jit(tx.update)
  out = []
  for k in range(n):
    u, state = update(_grads(grads, k), state, params, **extra)
    out.append(u)
  return out


@pytest.mark.parametrize("name", NAMES)
def test_plain_inject_hyperparams_matches_the_optimizer(name):
  case = CASES[name]
  params, grads = _tree()
  extra = _extra(case)
  injected = _steps(_inject(case), params, grads, 2, extra)
  plain = _steps(_plain(case), params, grads, 2, extra)
  for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(injected)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  assert all(np.any(u != 0) for u in jax.tree.leaves(injected[-1]))


@pytest.mark.parametrize("name", NAMES)
def test_momentum_is_schedulable(name):
  # Step k uses the momentum the schedule gives at k: the same as rebuilding
  # the optimizer with that constant momentum at every step, carrying its state.
  case = CASES[name]
  params, grads = _tree()
  extra = _extra(case)
  lo, hi = case.momenta
  schedule = lambda count: jnp.where(count < 1, lo, hi)
  tx = _inject(case, **{case.momentum: schedule})
  got = _steps(tx, params, grads, 2, extra)
  state = _plain(case, **{case.momentum: lo}).init(params)
  want = []
  for k in range(2):
    g = _grads(grads, k)
    tx_k = _plain(case, **{case.momentum: lo if k < 1 else hi})
    u, state = tx_k.update(g, state, params, **extra)
    want.append(u)
  for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  constant = _steps(_plain(case, **{case.momentum: lo}), params, grads, 2, extra)
  differs = [not np.allclose(a, b) for a, b in zip(jax.tree.leaves(constant[-1]), jax.tree.leaves(got[-1]))]
  assert any(differs), "the scheduled momentum had no effect"


def _callable_cases():
  for name in NAMES:
    options = inspect.signature(CASES[name].factory).parameters
    for option in CALLABLE_OPTIONS:
      if option in options:
        yield pytest.param(name, option, id=f"{name}-{option}")


@pytest.mark.parametrize("name, option", list(_callable_cases()))
def test_callable_option_without_static_args_raises(name, option):
  case = CASES[name]
  params, _ = _tree()
  value = CALLABLE_OPTIONS[option]
  tx = _inject(case, **{option: value})
  with pytest.raises(ValueError, match=rf"{option}.*static_args=\('{option}',\)"):
    tx.init(params)
  # Named in static_args, the callable is passed through (init applies it to
  # the params) and is not a hyperparameter of the state.
  tx = _inject(case, static_args=(option,), **{option: value})
  state = tx.init(params)
  assert option not in state.hyperparams and "learning_rate" in state.hyperparams


@pytest.mark.parametrize(
  "name, option, value",
  [
    *((name, "ns_steps", 4) for name in ("muon", "normuon", "adamuon", "muon_clip", "scion", "unconstrained_scion")),
    ("muon_clip", "head_dim", 4),
    ("muon_clip", "kv_heads", 1),
  ],
)
def test_injected_shape_option_names_static_args(name, option, value):
  # Newton–Schulz's iteration count and QK-clip's head layout fix Python loops
  # and shapes: a traced value cannot, and the message says what to do.
  case = CASES[name]
  params, _ = _tree()
  tx = optax.inject_hyperparams(case.factory)(learning_rate=case.learning_rate, **{option: value})
  with pytest.raises(ValueError, match=rf"{option}.*static_args=\('{option}',\)"):
    tx.init(params)
  tx = _inject(case, static_args=(option,), **{option: value})
  tx.init(params)


def test_label_tree_that_is_a_bare_string_is_refused():
  # What a label function scheduled by inject_hyperparams leaves behind (by_role(step) == "vector").
  with pytest.raises(ValueError, match=r"labels.*static_args"):
    matopt.muon(0.02, labels="vector")


@pytest.mark.parametrize(
  "name", [n for n in NAMES if "cautious_weight_decay" in inspect.signature(CASES[n].factory).parameters]
)
def test_injected_weight_decay_with_cautious_decay(name):
  # weight_decay arrives traced under jit; the cautious rule must not branch on it in Python.
  case = CASES[name]
  params, grads = _tree()
  extra = _extra(case)
  injected = _steps(_inject(case, weight_decay=0.1, cautious_weight_decay=True), params, grads, 1, extra)
  plain = _steps(_plain(case, weight_decay=0.1, cautious_weight_decay=True), params, grads, 1, extra)
  for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(injected)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_injected_state_has_the_plain_structure(name):
  # optax's contract (contrib's inject_hyperparams test): the wrapped state's
  # inner_state is the optimizer's own state, so a checkpoint of one restores
  # into the other. weight_decay (default 0) arrives as an array under
  # inject_hyperparams: what the optimizer builds for a concrete 0 must not
  # change the state's tree.
  case = CASES[name]
  params, _ = _tree()
  injected = _inject(case).init(params).inner_state
  plain = _plain(case).init(params)
  assert jax.tree.structure(injected) == jax.tree.structure(plain)
