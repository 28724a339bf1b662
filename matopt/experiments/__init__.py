"""The main job: train small real models with several optimizers side by side.

``matopt run CONFIG`` (:mod:`matopt.cli`) reads a YAML config
(:mod:`~matopt.experiments.config`), builds its task
(:mod:`~matopt.experiments.tasks`) and optimizers
(:mod:`~matopt.experiments.optimizers`), trains each
(:mod:`~matopt.experiments.train`), reads the finished runs back
(:mod:`~matopt.experiments.collect`) and reports them
(:mod:`~matopt.experiments.report`); :mod:`~matopt.experiments.runner` ties
them together. Imported on demand: ``import matopt`` does not load it.
"""

import importlib.util

# What `pip install "matopt[experiments]"` adds to the core install (jax, optax,
# numpy): module to find, distribution to install.
REQUIREMENTS = {
  "flax": "flax",
  "orbax.checkpoint": "orbax-checkpoint",
  "matplotlib": "matplotlib",
  "rich": "rich",
  "yaml": "pyyaml",
}


def require() -> None:
  """Raises a clear ImportError when the runner's extra is not installed.

  Raises:
    ImportError: a module of :data:`REQUIREMENTS` is missing; the message names
      the distributions and the install command.
  """
  missing = []
  for module, dist in REQUIREMENTS.items():
    try:
      found = importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # the parent package of a dotted name is missing
      found = False
    if not found:
      missing.append(dist)
  if missing:
    raise ImportError(
      f"matopt's experiment runner (matopt run / report / readme) needs {', '.join(missing)}, which the core "
      'install does not include: pip install "matopt[experiments]".'
    )


require()
