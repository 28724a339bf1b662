"""Pure array math: Newton–Schulz msign, LMOs and their norms."""

from matopt.linalg.coefficients import PRESETS as PRESETS
from matopt.linalg.coefficients import Schedule as Schedule
from matopt.linalg.coefficients import resolve_schedule as resolve_schedule
from matopt.linalg.operator_norms import NORMS as NORMS
from matopt.linalg.operator_norms import dual_norm as dual_norm
from matopt.linalg.operator_norms import lmo as lmo
from matopt.linalg.operator_norms import norm as norm
from matopt.linalg.newton_schulz import msign as msign

__all__ = ["PRESETS", "NORMS", "Schedule", "resolve_schedule", "msign", "lmo", "norm", "dual_norm"]
