"""sharpness: Sharpness-Aware Minimization for PyTorch.

``from sharpness import SAM, LookSAM`` for the optimizers; ``sharpness.functional`` for the pure
ascent rules; ``sharpness.modules`` for m-SAM, batch-norm and DDP helpers;
``sharpness.measures`` for sharpness and curvature. It needs torch and numpy only (the
reproduction's infrastructure lives in the separate ``suite`` package).
"""

from sharpness import functional
from sharpness.modules import frozen_bn_stats, local_grads, msam_backward
from sharpness.optim import SAM, LookSAM

__all__ = ["SAM", "LookSAM", "functional", "frozen_bn_stats", "local_grads", "msam_backward"]
__version__ = "0.1.0"
