"""Full optimizers: chains and partitions of matopt transforms and optax."""

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

__all__ = ["adamuon", "clipped_sgd", "muon", "muon_clip", "normuon", "nsgd", "scion", "shampoo", "signum", "soap", "unconstrained_scion"]
