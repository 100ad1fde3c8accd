"""fig9_erm_to_sam_cifar10: Fig. 9 of "Towards Understanding SAM": switching ERM -> SAM late.

Claim: switching from ERM to SAM for the last part of training improves the test error, and the
solution stays in the ERM basin; the reverse switch SAM -> ERM keeps most of SAM's gain.
Paper number (approx.): CIFAR-10 ~4.65% -> ~4.2% (ERM -> SAM); SAM -> ERM ~3.95%.
Command: python -m deep_nets.train --config fig9_erm_to_sam_cifar10
    SAM -> ERM: --sam_epoch_frac_start 0 --sam_epoch_frac_end 0.9
Measured here: not run (GPU-days).
"""

from deep_nets.configs._resnet18_cifar10 import RESNET18_CIFAR10

FLAGS = dict(
    RESNET18_CIFAR10,
    sam_rho=0.1,
    sam_epoch_frac_start=0.9,
    sam_epoch_frac_end=1.0,
)
