"""Pure array math: Newton–Schulz msign, LMOs and their norms, inverse roots."""

from matopt.linalg.coefficients import PRESETS as PRESETS
from matopt.linalg.coefficients import Preset as Preset
from matopt.linalg.coefficients import Schedule as Schedule
from matopt.linalg.coefficients import register_preset as register_preset
from matopt.linalg.coefficients import resolve_schedule as resolve_schedule
from matopt.linalg.eigenbasis import eigenbasis as eigenbasis
from matopt.linalg.eigenbasis import refresh_eigenbasis as refresh_eigenbasis
from matopt.linalg.newton_schulz import METHODS as METHODS
from matopt.linalg.newton_schulz import msign as msign
from matopt.linalg.operator_norms import NORMS as NORMS
from matopt.linalg.operator_norms import NormInfo as NormInfo
from matopt.linalg.operator_norms import dual_norm as dual_norm
from matopt.linalg.operator_norms import lmo as lmo
from matopt.linalg.operator_norms import norm as norm
from matopt.linalg.operator_norms import register_norm as register_norm
from matopt.linalg.roots import inverse_pth_root as inverse_pth_root
from matopt.linalg.roots import root_error as root_error

__all__ = [
  "METHODS",
  "NORMS",
  "PRESETS",
  "NormInfo",
  "Preset",
  "Schedule",
  "dual_norm",
  "eigenbasis",
  "inverse_pth_root",
  "lmo",
  "msign",
  "norm",
  "refresh_eigenbasis",
  "register_norm",
  "register_preset",
  "resolve_schedule",
  "root_error",
]
