"""optax's own contrib contract suite, run over every public matopt optimizer.

The suite is ``optax/contrib/_common_test.py`` of the INSTALLED optax, imported
as is (never copied here). Each test method of its absl ``ContribTest`` is
unwrapped to the original function (absl keeps it as ``__wrapped__``) and
called with a matopt optimizer, while the module's ``_get_opt_factory`` is
patched to return matopt's factory. One pytest case per optax test × matopt
optimizer × that test's own parameters (target, dtype, ...), read from the
cases absl generated, so a new optax test or parameter is picked up by itself;
a test the loader cannot adapt is an error at collection, and a test optax
skips for a matopt optimizer is a failure unless ``EXCEPTIONS`` lists it.

Every departure from optax's suite is one row of ``EXCEPTIONS``, with its reason.
"""

import dataclasses
import functools
import importlib
import inspect
import pathlib
import unittest
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax.numpy as jnp
import optax.contrib
import pytest
from absl.testing import parameterized

import matopt

if tuple(int(x) for x in optax.__version__.split(".")[:3]) < (0, 2, 7):
  # optax 0.2.6's suite decorates with chex.variants, which this loader does not take apart.
  pytest.skip("optax's contract suite is loaded from optax >= 0.2.7", allow_module_level=True)
common_test = importlib.import_module("optax.contrib._common_test")
assert pathlib.Path(common_test.__file__).parent == pathlib.Path(optax.contrib.__file__).parent

# What a user would pass. Learning rates are chosen for optax's four
# 30,000-step targets (a parabola from 11 away, Rosenbrock, a 2×2 matrix
# parabola, and a vector and a matrix at once; tolerance 3e-2), with the
# worst final error / tolerance over the four targets measured (pass ≤ 1):
#
# - Muon family: optax's entry for its own muon is 1e-2, for Muon and its
#   Adam alike. matopt's muon/normuon derive AdamW's rate as 0.015·η
#   (Jordan's 3e-4 / 0.02), which at η = 1e-2 moves a vector at most 4.5 in
#   30,000 steps, so the user names adam_learning_rate (worst 0.29 muon, 0.10
#   normuon); adamuon and muon_clip match RMS and run AdamW at η (0.09).
# - Scion: steps γ·ρ·lmo(d), of RMS γρ per coordinate at any distance, with
#   the language recipe's ρ = 50; γ = 1e-4 steps 5e-3 (worst 0.40 scion, 0.62
#   uSCG); at γ = 1e-3 the iterates hover up to 0.18 off the optimum and
#   Rosenbrock stalls at (0.28, 0.003).
# - signum / nsgd: fixed-size steps too; η = 1e-3 (worst 0.68 on Rosenbrock
#   and 0.02); at 1e-2 both miss Rosenbrock (2.2 and 1.1).
# - clipped_sgd: momentum SGD near the optimum, η = 1e-3 is stable on
#   Rosenbrock (curvature ≈ 1000 at (1, 1)); worst 0.00.
# - shampoo / soap: Adam-grafted / Adam-in-eigenbasis steps, 1e-2 as optax's
#   Adam-like entries; worst 0.00.
OPTIMIZERS: dict[str, dict[str, Any]] = {
  "muon": {"learning_rate": 1e-2, "adam_learning_rate": 1e-2},
  "normuon": {"learning_rate": 1e-2, "adam_learning_rate": 1e-2},
  "adamuon": {"learning_rate": 1e-2},
  "muon_clip": {"learning_rate": 1e-2},
  "scion": {"learning_rate": 1e-4},
  "unconstrained_scion": {"learning_rate": 1e-4},
  "shampoo": {"learning_rate": 1e-2},
  "soap": {"learning_rate": 1e-2},
  "signum": {"learning_rate": 1e-3},
  "nsgd": {"learning_rate": 1e-3},
  "clipped_sgd": {"learning_rate": 1e-3},
}

# Keys of optax's cases that describe ITS optimizer; the other keys are the
# test's own parameters.
_OPTIMIZER_KEYS = ("opt_name", "opt_kwargs", "wrapper_name", "wrapper_kwargs")
# Own parameters that only matter for optax's wrappers (wrapper_name, None
# in every matopt case): `wrap` decides whether to apply the wrapper, so
# wrap=True and wrap=False run the same code here; one value is kept.
_WRAPPER_ONLY = {"wrap": False}

ANY = "*"
_INJECT = "test_optimizers_can_be_wrapped_in_inject_hyperparams"
_SCHEDULE = "test_optimizers_accept_learning_rate_schedule_if_type_annotated_as_such"
# The inject test's tree [(2, 3), (2, 5, 2)]: a matrix and a stack of two (5, 2) layers.
_INJECT_VIEWS = [matopt.DimensionNumbers(0, 1), matopt.DimensionNumbers(1, 2)]


class Exception_(NamedTuple):
  """A departure from optax's suite, for the cases its key names."""

  # "kwargs": run with these constructor kwargs added (what a user passes for
  # that test's tree); "annotations": optax sees the factory's signature with
  # its annotations evaluated; "xfail": xfail(strict=True, raises=raises), so
  # a fixed case fails the run; "skip": only where the test cannot apply.
  kind: str
  reason: str
  raises: type[BaseException] | None = None
  kwargs: Mapping[str, Any] | None = None


# (optax test, matopt optimizer, params id; each may be ANY) → Exception_.
# A case takes every row it matches (at most one xfail or skip); every row
# matches at least one case.
EXCEPTIONS: dict[tuple[str, str, str], Exception_] = {
  # matopt's modules use PEP 563 (`from __future__ import annotations`;
  # matopt.experiments.optimizers and tests/test_options.py read the
  # annotation strings), so inspect.signature shows learning_rate's
  # annotation as the string "optax.ScalarOrSchedule" and optax's
  # `annotation in (ScalarOrSchedule, Schedule)` would skip the test.
  # typing.get_type_hints / inspect.signature(eval_str=True) give the object.
  (_SCHEDULE, ANY, ANY): Exception_(
    "annotations",
    "learning_rate's annotation is the PEP 563 string 'optax.ScalarOrSchedule'; optax compares"
    " the evaluated object, so the factory's signature is given with eval_str=True",
  ),
  # QK-clip acts on the attention logits the model saw, so MuonClip's
  # update requires max_logits= (an empty tree for a model without
  # attention) and raises without it rather than silently not clipping
  # (matopt.qk_clip); optax's suite calls update(grads, state, params).
  (ANY, "muon_clip", ANY): Exception_(
    "xfail", "update() requires max_logits= (QK-clip's input), which optax's suite does not pass", raises=ValueError
  ),
  **{
    (_INJECT, name, ANY): Exception_(
      "kwargs",
      "the test's (2, 5, 2) leaf may be a stack of (5, 2) layers or a 1-D conv kernel: matopt refuses to"
      " guess (views.infer_dimension_numbers) and the user names its view in dimension_numbers",
      kwargs={"dimension_numbers": _INJECT_VIEWS},
    )
    for name in ("muon", "normuon", "adamuon", "scion", "unconstrained_scion", "shampoo", "soap")
  },
}

# Marked slow: optax's 30,000-step lax.scan per target (measured 0.03–2.3 s a
# case, SOAP and Shampoo's matrices the dearest; 15 s for the 44 on a loaded
# 2-core machine), and the inject test for Shampoo and SOAP, which compiles
# their eigen-solvers twice (6 and 9 s).
_SLOW = {("test_optimizers", ANY), (_INJECT, "shampoo"), (_INJECT, "soap")}


@dataclasses.dataclass(frozen=True)
class Case:
  test: str
  optimizer: str
  params: tuple[tuple[str, Any], ...]
  params_id: str
  method: str  # one absl-generated method name, to build the TestCase

  @property
  def id(self) -> str:
    return f"{self.test}-{self.optimizer}" + (f"-{self.params_id}" if self.params_id else "")


def _param_id(value: Any) -> str:
  if inspect.isfunction(value):
    return value.__name__.removeprefix("_setup_")
  try:
    return jnp.dtype(value).name
  except TypeError:
    return str(value)


def _optax_tests(test_class: type) -> dict[str, tuple[Any, list[dict[str, Any]], str]]:
  """optax test name → (original function, its own parameter sets, one generated method name)."""
  tests: dict[str, tuple[Any, list[dict[str, Any]], str]] = {}
  for attr in dir(test_class):
    member = getattr(test_class, attr)
    if not attr.startswith("test") or not callable(member):
      continue
    fn = getattr(member, "__wrapped__", None)
    case = inspect.getclosurevars(member).nonlocals.get("testcase_params") if fn is not None else None
    if not isinstance(case, Mapping) or "opt_name" not in case or "opt_kwargs" not in case:
      raise RuntimeError(
        f"optax's {test_class.__name__}.{attr} is not an absl-parameterized test over (opt_name, opt_kwargs):"
        " this loader cannot run it with matopt's optimizers; adapt tests/optimizers/test_optax_contract.py."
      )
    own = {k: v for k, v in case.items() if k not in _OPTIMIZER_KEYS}
    _, own_sets, _ = tests.setdefault(fn.__name__, (fn, [], attr))
    if own not in own_sets and all(own.get(k, v) == v for k, v in _WRAPPER_ONLY.items()):
      own_sets.append(own)
  if not tests:
    raise RuntimeError(f"found no tests in optax's {test_class.__name__}")
  return tests


OPTAX_TESTS = _optax_tests(common_test.ContribTest)


def _cases() -> list[Case]:
  cases = []
  for test, (_, own_sets, method) in OPTAX_TESTS.items():
    for optimizer in OPTIMIZERS:
      for own in own_sets:
        params = tuple((k, v) for k, v in own.items() if k not in _WRAPPER_ONLY)
        cases.append(Case(test, optimizer, params, "-".join(_param_id(v) for _, v in params), method))
  return cases


CASES = _cases()


def _exceptions(case: Case) -> dict[tuple[str, str, str], Exception_]:
  rows = {
    key: row
    for key, row in EXCEPTIONS.items()
    if all(k in (ANY, v) for k, v in zip(key, (case.test, case.optimizer, case.params_id)))
  }
  if sum(row.kind in ("xfail", "skip") for row in rows.values()) > 1:
    raise RuntimeError(f"{case.id} matches several xfail/skip rows of EXCEPTIONS: {list(rows)}")
  return rows


def _marks(case: Case) -> list[Any]:
  marks = []
  if {(case.test, ANY), (case.test, case.optimizer)} & _SLOW:
    marks.append(pytest.mark.slow)
  for row in _exceptions(case).values():
    if row.kind == "skip":
      marks.append(pytest.mark.skip(reason=row.reason))
    elif row.kind == "xfail":
      marks.append(pytest.mark.xfail(strict=True, raises=row.raises, reason=row.reason))
  return marks


def test_every_public_optimizer_is_covered():
  assert sorted(OPTIMIZERS) == sorted(matopt.OPTIMIZERS)


def test_every_exception_names_a_case():
  used = {key for case in CASES for key in _exceptions(case)}
  stale = sorted(set(EXCEPTIONS) - used)
  assert not stale, f"EXCEPTIONS rows that match no case (did optax or matopt change?): {stale}"
  assert {test for test, _ in _SLOW} <= set(OPTAX_TESTS), "_SLOW names a test optax no longer has"
  for key, exception in EXCEPTIONS.items():
    assert exception.kind in ("kwargs", "annotations", "xfail", "skip") and exception.reason, key
    assert (exception.kind == "xfail") == (exception.raises is not None), key
    assert (exception.kind == "kwargs") == bool(exception.kwargs), key


def test_loader_picks_up_new_tests_and_refuses_what_it_cannot_run():
  # What a future optax might add: a new parameterized test is collected with
  # its own parameters; a test over no optimizer is an error, not dropped.
  class Future(parameterized.TestCase):
    @parameterized.product([{"opt_name": "x", "opt_kwargs": {}}, {"opt_name": "y", "opt_kwargs": {}}], size=(1, 2))
    def test_new(self, opt_name, opt_kwargs, size):
      del opt_name, opt_kwargs, size

  tests = _optax_tests(Future)
  assert list(tests) == ["test_new"] and tests["test_new"][1] == [{"size": 1}, {"size": 2}]

  class Plain(Future):
    def test_plain(self):
      pass

  with pytest.raises(RuntimeError, match=r"Plain\.test_plain is not an absl-parameterized test"):
    _optax_tests(Plain)


def _evaluated_annotations(factory):
  """``factory`` itself, its signature showing evaluated annotations (as ``typing.get_type_hints``)."""

  @functools.wraps(factory)
  def wrapped(*args, **kwargs):
    return factory(*args, **kwargs)

  wrapped.__signature__ = inspect.signature(factory, eval_str=True)
  return wrapped


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=_marks(c)) for c in CASES])
def test_optax_contract(case: Case, monkeypatch):
  fn, _, _ = OPTAX_TESTS[case.test]
  rows = _exceptions(case).values()

  def get_opt_factory(name):
    if name != case.optimizer:
      raise ValueError(f"optax's suite asked for {name!r}; the case is for {case.optimizer!r}")
    factory = getattr(matopt, name)
    return _evaluated_annotations(factory) if any(r.kind == "annotations" for r in rows) else factory

  monkeypatch.setattr(common_test, "_get_opt_factory", get_opt_factory)
  # A real TestCase, so that self.subTest, assertEmpty and skipTest work.
  test_case = common_test.ContribTest(case.method)
  opt_kwargs = dict(OPTIMIZERS[case.optimizer])
  for row in rows:
    opt_kwargs.update(row.kwargs or {})
  kwargs = dict(case.params, opt_name=case.optimizer, opt_kwargs=opt_kwargs)
  signature = inspect.signature(fn).parameters
  for key in ("wrapper_name", "wrapper_kwargs"):
    if key in signature:
      kwargs[key] = None
  kwargs.update({k: v for k, v in _WRAPPER_ONLY.items() if k in signature})
  try:
    fn(test_case, **kwargs)
  except unittest.SkipTest as skip:
    # optax skips what it judges inapplicable (say, a learning_rate not
    # annotated as a schedule); for matopt that is a listed exception or a bug.
    pytest.fail(f"optax skipped {case.id}: {skip} List it in EXCEPTIONS if legitimate.")
