"""matopt: matrix-aware optimizers for JAX, as composable optax transforms."""

import importlib.metadata

from matopt import labels as labels
from matopt import sharding as sharding
from matopt.gauss_newton import SampledLabelGrads as SampledLabelGrads
from matopt.gauss_newton import nnx_sampled_label_grads as nnx_sampled_label_grads
from matopt.gauss_newton import sampled_label_grads as sampled_label_grads
from matopt.linalg import dual_norm as dual_norm
from matopt.linalg import inverse_pth_root as inverse_pth_root
from matopt.linalg import lmo as lmo
from matopt.linalg import msign as msign
from matopt.linalg import norm as norm
from matopt.optimizers import OPTIMIZERS as OPTIMIZERS

# The factories, re-exported by name so that type checkers and IDEs see them;
# tests/optimizers/test_registry.py checks these lines against OPTIMIZERS.
from matopt.optimizers.adamuon import adamuon as adamuon
from matopt.optimizers.clipped_sgd import clipped_sgd as clipped_sgd
from matopt.optimizers.muon import muon as muon
from matopt.optimizers.muon_clip import muon_clip as muon_clip
from matopt.optimizers.normuon import normuon as normuon
from matopt.optimizers.nsgd import nsgd as nsgd
from matopt.optimizers.scion import scion as scion
from matopt.optimizers.scion import unconstrained_scion as unconstrained_scion
from matopt.optimizers.shampoo import shampoo as shampoo
from matopt.optimizers.signum import signum as signum
from matopt.optimizers.soap import soap as soap
from matopt.transforms import DimensionNumbers as DimensionNumbers
from matopt.transforms import add_decayed_weights as add_decayed_weights
from matopt.transforms import clip_by_norm as clip_by_norm
from matopt.transforms import normalize_by_norm as normalize_by_norm
from matopt.transforms import partition as partition
from matopt.transforms import qk_clip as qk_clip
from matopt.transforms import scale_by_adamuon as scale_by_adamuon
from matopt.transforms import scale_by_lmo as scale_by_lmo
from matopt.transforms import scale_by_msign as scale_by_msign
from matopt.transforms import scale_by_normuon as scale_by_normuon
from matopt.transforms import scale_by_shampoo as scale_by_shampoo
from matopt.transforms import scale_by_shape as scale_by_shape
from matopt.transforms import scale_by_sign as scale_by_sign
from matopt.transforms import scale_by_soap as scale_by_soap
from matopt.transforms.views import dimension_numbers_by_path as dimension_numbers_by_path

try:
  __version__ = importlib.metadata.version("matopt")
except importlib.metadata.PackageNotFoundError:  # running from a source tree
  __version__ = "0.0.0"

__all__ = [
  "DimensionNumbers",
  "OPTIMIZERS",
  "SampledLabelGrads",
  "add_decayed_weights",
  "clip_by_norm",
  "dimension_numbers_by_path",
  "dual_norm",
  "inverse_pth_root",
  "labels",
  "lmo",
  "msign",
  "nnx_sampled_label_grads",
  "norm",
  "normalize_by_norm",
  "partition",
  "qk_clip",
  "sampled_label_grads",
  "scale_by_adamuon",
  "scale_by_lmo",
  "scale_by_msign",
  "scale_by_normuon",
  "scale_by_shampoo",
  "scale_by_shape",
  "scale_by_sign",
  "scale_by_soap",
  "sharding",
  *OPTIMIZERS,
]
