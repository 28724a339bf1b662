"""Per-leaf ``optax.GradientTransformation`` primitives (ascent directions)."""

from matopt.transforms.adamuon import ScaleByAdaMuonState as ScaleByAdaMuonState
from matopt.transforms.adamuon import scale_by_adamuon as scale_by_adamuon
from matopt.transforms.decay import add_decayed_weights as add_decayed_weights
from matopt.transforms.lmo import scale_by_lmo as scale_by_lmo
from matopt.transforms.msign import scale_by_msign as scale_by_msign
from matopt.transforms.normalize import clip_by_norm as clip_by_norm
from matopt.transforms.normalize import normalize_by_norm as normalize_by_norm
from matopt.transforms.normuon import ScaleByNorMuonState as ScaleByNorMuonState
from matopt.transforms.normuon import scale_by_normuon as scale_by_normuon
from matopt.transforms.partition import partition as partition
from matopt.transforms.qk_clip import qk_clip as qk_clip
from matopt.transforms.shampoo import ScaleByShampooState as ScaleByShampooState
from matopt.transforms.shampoo import scale_by_shampoo as scale_by_shampoo
from matopt.transforms.shape_scale import scale_by_shape as scale_by_shape
from matopt.transforms.sign import scale_by_sign as scale_by_sign
from matopt.transforms.soap import ScaleBySoapState as ScaleBySoapState
from matopt.transforms.soap import scale_by_soap as scale_by_soap
from matopt.transforms.views import DimensionNumbers as DimensionNumbers

__all__ = [
  "DimensionNumbers",
  "ScaleByAdaMuonState",
  "ScaleByNorMuonState",
  "ScaleByShampooState",
  "ScaleBySoapState",
  "add_decayed_weights",
  "clip_by_norm",
  "normalize_by_norm",
  "partition",
  "qk_clip",
  "scale_by_adamuon",
  "scale_by_lmo",
  "scale_by_msign",
  "scale_by_normuon",
  "scale_by_shampoo",
  "scale_by_shape",
  "scale_by_sign",
  "scale_by_soap",
]
