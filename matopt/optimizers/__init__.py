"""Full optimizers: chains and partitions of matopt transforms and optax.

:data:`OPTIMIZERS` is the one list of them (``matopt`` exports each factory
as ``matopt.<name>``); ``matopt.optimizers.<module>`` are their files.
"""

from matopt.optimizers.registry import OPTIMIZERS as OPTIMIZERS
from matopt.optimizers.registry import OptimizerInfo as OptimizerInfo

__all__ = ["OPTIMIZERS", "OptimizerInfo"]
