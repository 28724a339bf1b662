"""Full optimizers: chains and partitions of matopt transforms and optax."""

from matopt.optimizers.clipped_sgd import clipped_sgd as clipped_sgd
from matopt.optimizers.muon import muon as muon
from matopt.optimizers.nsgd import nsgd as nsgd
from matopt.optimizers.scion import scion as scion
from matopt.optimizers.scion import unconstrained_scion as unconstrained_scion
from matopt.optimizers.shampoo import shampoo as shampoo
from matopt.optimizers.signum import signum as signum
from matopt.optimizers.soap import soap as soap

__all__ = ["clipped_sgd", "muon", "nsgd", "scion", "shampoo", "signum", "soap", "unconstrained_scion"]
