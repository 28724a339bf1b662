"""The Newton–Schulz iteration count of the optimizers that orthogonalise.

In an optimizer's namespace ``steps`` would read as training steps (the
experiment configs' ``steps:`` is one), so the optimizers call it
``ns_steps``; the transforms (:func:`matopt.scale_by_msign`,
:func:`matopt.scale_by_lmo`) and :func:`matopt.msign` keep ``steps``, where
nothing else counts steps.
"""

from __future__ import annotations

from matopt import _checks


def check_ns_steps(factory: str, ns_steps: object) -> None:
  """Raises a ValueError naming ``ns_steps`` unless it is an int >= 1 or None.

  It fixes a Python loop, so under ``optax.inject_hyperparams`` it must be
  named in ``static_args`` (the message says so).
  """
  _checks.check_not_injected(factory, ("ns_steps",), numbers_too=True)
  _checks.check_static_int(factory, "ns_steps", ns_steps)
  _checks.check_positive_int("ns_steps", ns_steps, none_means="the coeffs preset's default")
