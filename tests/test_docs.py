"""docs/: getting_started.md's Python snippets run as written (in order, one namespace), and every
public name has an entry in the API pages (docs/api/*.rst)."""

import functools
import inspect
import pathlib
import re

import jax
import jax.numpy as jnp
import pytest

import matopt

REPO = pathlib.Path(__file__).resolve().parents[1]
PAGE = REPO / "docs" / "getting_started.md"


def test_getting_started_snippets_run():
  text = PAGE.read_text()
  blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
  assert len(blocks) >= 4
  namespace: dict = {}
  for block in blocks:
    exec(compile(block, str(PAGE), "exec"), namespace)
  # The quickstart chain took a step from its initial matrix; both training loops learned.
  assert not jnp.allclose(namespace["params"]["w"], jax.random.normal(jax.random.key(0), (64, 32)))
  for key in ("nnx_losses", "linen_losses"):
    losses = namespace[key]
    assert len(losses) == 25
    assert losses[-1] < 0.5 * losses[0], (key, losses[0], losses[-1])
  # The page's comments say which layer gets Muon and which AdamW: by_role agrees.
  roles = matopt.labels.by_role(namespace["linen_params"])
  assert roles == {"hidden": {"kernel": "hidden", "bias": "vector"}, "head": {"kernel": "head", "bias": "vector"}}


def test_getting_started_commands_name_real_configs():
  commands = re.findall(r"^matopt run (\S+)", PAGE.read_text(), flags=re.M)
  assert commands
  for name in commands:
    assert (REPO / "configs" / f"{name}.yaml").is_file(), name


@functools.cache
def _documented_objects():
  """The objects the API pages document: each auto* / data directive resolved in its current module,
  and the public members of each automodule given with :members:."""
  import importlib

  found = []
  for page in sorted((REPO / "docs" / "api").glob("*.rst")):
    lines = page.read_text().splitlines()
    module = "matopt"
    for i, line in enumerate(lines):
      if m := re.match(r"\.\. currentmodule:: (\S+)", line):
        module = m.group(1)
      elif m := re.match(r"\.\. automodule:: (\S+)", line):
        module = m.group(1)  # as in Sphinx, an automodule sets the current module
        options = []
        for follow in lines[i + 1 :]:
          if not follow.startswith("   :"):
            break
          options.append(follow.strip())
        if ":members:" in options:
          mod = importlib.import_module(m.group(1))
          names = getattr(mod, "__all__", [n for n in vars(mod) if not n.startswith("_")])
          found += [getattr(mod, n) for n in names]
      elif m := re.match(r"\.\. (?:auto)?(?:function|class|data|exception|attribute)::\s+(\S+)", line):
        name = m.group(1)
        obj = importlib.import_module("matopt" if name.startswith("matopt.") else module)
        for part in name.removeprefix("matopt.").split("."):
          if not hasattr(obj, part) and inspect.ismodule(obj):  # a submodule not imported by its package
            importlib.import_module(f"{obj.__name__}.{part}")
          obj = getattr(obj, part)  # a directive naming nothing fails here
        found.append(obj)
  return tuple(found)


@pytest.mark.parametrize("module", ["matopt", "matopt.transforms", "matopt.linalg", "matopt.labels"])
def test_every_public_name_has_an_api_entry(module):
  import importlib

  mod = importlib.import_module(module)
  documented = _documented_objects()
  public = getattr(mod, "__all__", None) or [
    n for n, v in vars(mod).items() if not n.startswith("_") and getattr(v, "__module__", module) == module
  ]
  missing = [
    name
    for name in public
    if not inspect.ismodule(getattr(mod, name)) and not any(getattr(mod, name) is obj for obj in documented)
  ]
  assert not missing, f"{module}.{missing} appear on no page of docs/api/ (add an autofunction/autoclass line)"
