"""Reference implementations from the package index, run on matopt's inputs.

Every test here needs the ``[parity]`` extra (torch and the reference
packages). Without it the directory is not collected and the report header
(``tests/conftest.py``, whose marker table also marks these tests
``parity``) says so; with ``MATOPT_PARITY=required`` (set by ``.ci/run``) a
missing package fails the run instead, so CI can never skip them silently.
"""

import importlib.util
import os

# Import names of the packages the [parity] extra installs.
_PACKAGES = ("torch", "muon", "optax_shampoo", "pytorch_optimizer", "heavyball", "timm")
_MISSING = [name for name in _PACKAGES if importlib.util.find_spec(name) is None]

if _MISSING and os.environ.get("MATOPT_PARITY") == "required":
  raise ImportError(f"MATOPT_PARITY=required but {', '.join(_MISSING)} not installed: pip install -e '.[dev,parity]'")

collect_ignore_glob = ["test_*.py"] if _MISSING else []
