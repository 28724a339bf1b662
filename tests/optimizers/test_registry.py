"""``matopt.OPTIMIZERS`` is the one list of optimizers; everything else is derived from it or checked against it."""

import importlib
import inspect
import pathlib
import pkgutil
import re
import types
import typing

import jax
import numpy as np
import optax
import pytest

import matopt
from matopt.optimizers import OPTIMIZERS
from tests.optimizers.registry import REGISTRY

ROOT = pathlib.Path(__file__).resolve().parents[2]
NAMES = sorted(OPTIMIZERS)
# Muon's variants and the options of matopt.muon each sets itself.
MUON_VARIANTS = {"normuon": ("adaptive",), "adamuon": ("adaptive",), "muon_clip": ()}


def _backticked(text: str) -> set[str]:
  return set(re.findall(r"`([A-Za-z_][A-Za-z0-9_]*)`", text))


def test_records_are_keyed_by_name_and_declare_real_options():
  for name, info in OPTIMIZERS.items():
    assert info.name == name and info.summary, name
    parameters = inspect.signature(info.factory).parameters
    assert "learning_rate" in parameters, name
    missing = sorted(set(info.model_options) - set(parameters))
    assert not missing, f"{name}: model_options {missing} are not options of {info.factory.__name__}"


@pytest.mark.parametrize("name", NAMES)
def test_matopt_exports_each_registered_factory(name):
  assert name in dir(matopt) and name in matopt.__all__
  assert getattr(matopt, name) is OPTIMIZERS[name].factory


def test_every_optimizer_matopt_exports_is_registered():
  # matopt/__init__.py re-exports the factories by hand, for type checkers:
  # one that is exported but not registered would miss every derived list.
  exported = {
    n for n in matopt.__all__ if getattr(getattr(matopt, n), "__module__", "").startswith("matopt.optimizers.")
  }
  assert exported == set(OPTIMIZERS)


def test_optimizers_package_does_not_shadow_its_modules():
  # matopt.optimizers.<module> is the module, never a function of that name.
  package = matopt.optimizers
  for module in pkgutil.iter_modules(package.__path__):
    importlib.import_module(f"{package.__name__}.{module.name}")
    assert isinstance(getattr(package, module.name), types.ModuleType), module.name


def test_test_registry_covers_every_registered_optimizer():
  missing = sorted(set(OPTIMIZERS) - set(REGISTRY))
  assert not missing, f"add {missing} to tests/optimizers/registry.py"


def test_readme_table_names_exactly_the_registered_optimizers():
  text = (ROOT / "README.md").read_text()
  (row,) = [line for line in text.splitlines() if line.startswith("| optimizers (")]
  listed = _backticked(row.split("|")[2])
  assert listed == set(OPTIMIZERS), (
    f"README.md's optimizers row: missing {sorted(set(OPTIMIZERS) - listed)}, unknown {sorted(listed - set(OPTIMIZERS))}"
  )


def test_configs_readme_names_every_registered_optimizer_and_only_optax_besides():
  text = (ROOT / "configs" / "README.md").read_text()
  assert "Optimizers:" in text, "configs/README.md lists the optimizers after 'Optimizers:'"
  # The list runs to the sentence's end; remarks in parentheses name other things.
  body = re.sub(r"\([^()]*\)", "", text.split("Optimizers:", 1)[1])
  listed = _backticked(re.split(r"\.(?:\s|$)", body, maxsplit=1)[0])
  missing = sorted(set(OPTIMIZERS) - listed)
  assert not missing, f"configs/README.md does not list {missing}"
  # The others are optax's baselines (adamw, sgd...) and the runner's own
  # entries (shampoo_gn, soap_gn: registered optimizers fed other statistics).
  pytest.importorskip("flax", reason="the runner's catalogue needs the [experiments] extra")
  from matopt.experiments.optimizers import CATALOGUE

  unknown = sorted(n for n in listed - set(OPTIMIZERS) if not callable(getattr(optax, n, None)) and n not in CATALOGUE)
  assert not unknown, f"configs/README.md lists {unknown}, neither registered, optax nor runner optimizers"


# --- Muon's variants: muon's options, and their own ------------------------


@pytest.mark.parametrize("name", sorted(MUON_VARIANTS))
def test_muon_variant_takes_every_muon_option(name):
  muon = inspect.signature(matopt.muon).parameters
  variant = inspect.signature(getattr(matopt, name)).parameters
  sets = MUON_VARIANTS[name]
  for option, p in muon.items():
    if p.kind is not inspect.Parameter.KEYWORD_ONLY:
      continue
    if option in sets:
      assert option not in variant, f"{name} sets {option} itself"
      continue
    assert option in variant, f"{name} lacks muon's {option}"
    assert variant[option].kind is inspect.Parameter.KEYWORD_ONLY
    assert variant[option].annotation == p.annotation, option
  assert all(p.kind is not inspect.Parameter.VAR_KEYWORD for p in variant.values())
  assert getattr(matopt, name).__annotations__.keys() == {*variant, "return"}


@pytest.mark.parametrize("name", sorted(MUON_VARIANTS))
def test_muon_variant_annotations_resolve_like_muons(name):
  # What optax's contract suite and the experiments' config layer read.
  variant, muon = getattr(matopt, name), matopt.muon
  evaluated = inspect.signature(variant, eval_str=True).parameters
  assert evaluated["learning_rate"].annotation is optax.ScalarOrSchedule
  assert evaluated["coeffs"].annotation == inspect.signature(muon, eval_str=True).parameters["coeffs"].annotation
  hints = typing.get_type_hints(variant, localns={"ArrayTree": optax.Params})
  assert hints["ns_steps"] == int | None and hints["momentum"] is float


def test_muon_variants_own_defaults_win():
  assert inspect.signature(matopt.adamuon).parameters["scale"].default == "rms"
  assert inspect.signature(matopt.muon_clip).parameters["scale"].default == "rms"
  assert inspect.signature(matopt.normuon).parameters["scale"].default == "shape"


@pytest.mark.parametrize("name", sorted(MUON_VARIANTS))
def test_muon_variant_refuses_unknown_and_set_options_naming_itself(name):
  with pytest.raises(TypeError, match=rf"{name}\(\) got an unexpected keyword argument 'nonsense'"):
    getattr(matopt, name)(0.02, nonsense=1)
  for option in MUON_VARIANTS[name]:
    with pytest.raises(TypeError, match=rf"{name}\(\) got an unexpected keyword argument '{option}'"):
      getattr(matopt, name)(0.02, **{option: None})
  with pytest.raises(ValueError, match="ns_steps"):
    getattr(matopt, name)(0.02, ns_steps=0)


def _two_steps(tx):
  params = {"Dense_0": {"kernel": jax.random.normal(jax.random.key(0), (6, 10)), "bias": np.zeros(10, np.float32)}}
  state = tx.init(params)
  for k in range(2):
    grads = jax.tree.map(lambda p, k=k: jax.random.normal(jax.random.key(k + 1), p.shape), params)
    updates, state = tx.update(grads, state, params)
  return updates


def test_inherited_options_reach_muon():
  options = {"momentum": 0.5, "nesterov": False, "ns_steps": 3, "weight_decay": 0.1, "sign_momentum": True}
  got = _two_steps(matopt.normuon(0.02, b2=0.9, **options))
  want = _two_steps(matopt.muon(0.02, adaptive=matopt.scale_by_normuon(b2=0.9), **options))
  plain = _two_steps(matopt.normuon(0.02, b2=0.9))
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_array_equal(a, b)
  assert not np.allclose(got["Dense_0"]["kernel"], plain["Dense_0"]["kernel"])
