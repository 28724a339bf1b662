"""Sphinx configuration for matopt's documentation.

Build (warnings are errors, broken cross-references included)::

  python -m sphinx -W --keep-going -n -b html docs docs/_build/html

The notebooks (``notebooks/0*.ipynb``) and the benchmark page
(``benchmarks/README.md``) live outside ``docs/``; they are copied into the
git-ignored ``docs/_generated/`` when the build starts and rendered from there,
notebooks with their stored outputs (never executed here: the test suite runs
them).
"""

import importlib
import inspect
import pathlib
import re
import shutil
import sys

DOCS = pathlib.Path(__file__).resolve().parent
ROOT = DOCS.parent
GENERATED = DOCS / "_generated"

# Document the source tree next to this file, even when another matopt is installed.
sys.path.insert(0, str(ROOT))

import matopt  # noqa: E402

project = "matopt"
author = "matopt contributors"
copyright = "the matopt contributors"
release = matopt.__version__
version = release

extensions = [
  "sphinx.ext.autodoc",
  "sphinx.ext.napoleon",
  "sphinx.ext.mathjax",
  "sphinx.ext.viewcode",
  "myst_nb",  # MyST markdown and notebooks (loads myst_parser itself)
]

source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
root_doc = "index"
exclude_patterns = [
  "_build",
  "conf.py",
  # Run directories and per-size tables of the result pages: reached through
  # the pages that summarise them, not pages of their own.
  "*/runs/**",
  "*/sizes/**",
  "*/results.md",
]
# quickstart/results.md is included in results.md (by the {include} directive),
# which excluded files may be.

# -- Notebooks: stored outputs, never executed -----------------------------------
nb_execution_mode = "off"
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence"]
myst_heading_anchors = 3

# -- autodoc / napoleon ----------------------------------------------------------
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
# A private alias in a signature reads better spelled out than as a dead name.
autodoc_type_aliases = {"NormSpec": "str | Any | Callable[[optax.Params], Any]"}
# Long signatures (muon has 16 options) one parameter per line.
python_maximum_signature_line_length = 100
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
# "Attributes:" as a field list: autodoc documents the fields themselves, once.
napoleon_use_ivar = True
napoleon_custom_sections = [("References", "notes_style")]
add_module_names = False

# -- nitpicky: every matopt reference must resolve --------------------------------
# No intersphinx (CI has no internet): references to other packages' objects are
# left unresolved on purpose. Only those are ignored; a reference to a matopt name
# that is not documented still fails the build.
_OUTSIDE = (
  "jax",
  "jnp",
  "jaxlib",
  "optax",
  "numpy",
  "np",
  "flax",
  "nnx",
  "chex",
  "yaml",
  "typing",
  "typing_extensions",
  "collections",
  "collections.abc",
  "builtins",
  "pathlib",
  "os",
  "re",
  "types",
  "dataclasses",
  "enum",
  "functools",
  "inspect",
  "matplotlib",
  "orbax",
  "rich",
  "argparse",
  "io",
  "json",
)
# Bare names that type hints leave unqualified (``from jax.typing import ArrayLike``,
# ``from pathlib import Path`` under ``from __future__ import annotations``).
_BARE = ("ArrayLike", "DTypeLike", "Array", "Path")
nitpicky = True
_outside = "|".join(re.escape(m) for m in _OUTSIDE)
_bare = "|".join(re.escape(b) for b in _BARE)
nitpick_ignore_regex = [(r"py:.*", rf"({_outside})(\..*)?"), (r"py:.*", rf"({_bare})")]

# -- HTML --------------------------------------------------------------------------
html_theme = "furo"
html_title = f"matopt {release}"
html_static_path: list[str] = []


def _copy_outside_sources(app, config):
  """Copies the notebooks and the benchmark page into ``docs/_generated/``.

  Files are rewritten only when their bytes changed, so an incremental build
  re-reads only what changed.
  """
  del app, config
  wanted = {ROOT / "benchmarks" / "README.md": GENERATED / "benchmarks" / "README.md"}
  for nb in sorted((ROOT / "notebooks").glob("0*.ipynb")):
    wanted[nb] = GENERATED / "notebooks" / nb.name
  for stale in GENERATED.rglob("*") if GENERATED.exists() else ():
    if stale.is_file() and stale not in wanted.values():
      stale.unlink()
  for src, dst in wanted.items():
    dst.parent.mkdir(parents=True, exist_ok=True)
    if not dst.exists() or dst.read_bytes() != src.read_bytes():
      shutil.copy2(src, dst)


def _documented(env) -> dict[int, str]:
  """Maps ``id(obj)`` to the one documented name of every documented matopt object."""
  names: dict[int, str] = {}
  for name in sorted(env.get_domain("py").objects, key=len):  # the shortest path wins
    if name.startswith("matopt."):
      obj = _resolve(name)
      if obj is not None and not isinstance(obj, (bool, int, float, str)):
        names.setdefault(id(obj), name)
  return names


def _resolve(name: str):
  """Imports ``a.b.c`` as a module or an attribute path; None when it does not exist."""
  parts = name.split(".")
  for i in range(len(parts), 0, -1):
    try:
      obj = importlib.import_module(".".join(parts[:i]))
    except ImportError:
      continue
    try:
      for attr in parts[i:]:
        obj = getattr(obj, attr)
    except AttributeError:
      return None
    return obj
  return None


def _docstring_owner(node) -> tuple[str | None, str | None]:
  """The module and class whose docstring holds ``node``.

  autodoc marks each docstring's nodes with ``source = ".../file.py:docstring of
  a.b.name"``; the owner's module is where the docstring's short names live.
  """
  source = node.source or ""
  if ":docstring of " not in source:
    return None, None
  name = source.rsplit(":docstring of ", 1)[1]
  obj = _resolve(name)
  if inspect.ismodule(obj):
    return obj.__name__, None
  parts = name.split(".")
  for i in range(len(parts) - 1, 0, -1):  # the innermost enclosing class or module
    parent = _resolve(".".join(parts[:i]))
    if inspect.isclass(parent):
      return parent.__module__, f"{parent.__module__}.{parent.__qualname__}"
    if inspect.ismodule(parent):
      module = getattr(obj, "__module__", None)
      return (module if isinstance(module, str) and module.startswith("matopt") else parent.__name__), None
  return None, None


def _candidates(target: str, module: str | None, cls: str | None) -> list[str]:
  """Where a docstring's ``target`` may live: as written, then as seen from its owner."""
  if target.startswith("matopt.") or module is None:
    return [target]
  scopes = [cls] if cls else []
  parts = module.split(".")
  scopes += [".".join(parts[:i]) for i in range(len(parts), 0, -1)]  # the module, then its packages
  return [f"{scope}.{target}" for scope in scopes]


def _is_member(cls, name: str) -> bool:
  fields = getattr(cls, "__dataclass_fields__", None) or getattr(cls, "_fields", ())
  return name in fields or name in getattr(cls, "__annotations__", {}) or hasattr(cls, name)


def _canonical_reference(app, env, node, contnode):
  """Resolves a reference to the one place its object is documented.

  Every public object is documented once, under its shortest public path
  (``matopt.muon``, not ``matopt.optimizers.muon.muon``), so a docstring read
  outside its own module loses its short names. This looks the target up as
  Python would from the docstring's module (``lmo`` in
  ``matopt.linalg.operator_norms``, ``collect.collect`` from
  ``matopt.experiments.report``) or by any importable path
  (``matopt.linalg.eigenbasis.refresh_eigenbasis``), and links to the
  documented name of the *same* object; a field of a documented class links
  to the class. A name that does not exist, or is not documented, still fails
  the build.
  """
  if node.get("refdomain") != "py":
    return None
  target = node.get("reftarget", "").lstrip(".~")
  module, cls = _docstring_owner(node)
  if not target.startswith("matopt.") and module is None:
    return None
  if not hasattr(app, "_matopt_documented"):  # references resolve after every page was read
    app._matopt_documented = _documented(env)
  documented = app._matopt_documented
  domain = env.get_domain("py")
  for candidate in _candidates(target, module, cls):
    obj = _resolve(candidate)
    # Scalars are shared by value (small ints, interned strings): identity says nothing.
    if obj is not None and not isinstance(obj, (bool, int, float, str)) and id(obj) in documented:
      name = documented[id(obj)]
      return domain.resolve_xref(env, node["refdoc"], app.builder, node["reftype"], name, node, contnode)
    owner, _, member = candidate.rpartition(".")
    parent = _resolve(owner) if owner else None
    if inspect.isclass(parent) and id(parent) in documented and _is_member(parent, member):
      name = documented[id(parent)]
      return domain.resolve_xref(env, node["refdoc"], app.builder, "class", name, node, contnode)
  return None


def _skip_namedtuple_aliases(app, what, name, obj, skip, options):
  """Skips the "Alias for field number N" properties of NamedTuples.

  Their fields are described in the class docstring's ``Attributes:``.
  """
  del app, what, name, options
  doc = getattr(obj, "__doc__", None) or ""
  return True if doc.startswith("Alias for field number") else skip


def setup(app):
  app.connect("autodoc-skip-member", _skip_namedtuple_aliases)
  app.connect("config-inited", _copy_outside_sources)
  app.connect("missing-reference", _canonical_reference)
