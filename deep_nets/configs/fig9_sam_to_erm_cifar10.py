"""fig9_sam_to_erm_cifar10: Fig. 9 of "Towards Understanding SAM": SAM for most of training, then
ERM (the reverse switch of fig9_erm_to_sam_cifar10).

Claim: SAM -> ERM keeps most of SAM's gain over ERM.
Paper number (approx.): CIFAR-10 ERM ~4.65%, SAM -> ERM ~3.95%.
Command: python -m deep_nets.train --config fig9_sam_to_erm_cifar10
Measured here: not run (GPU-days).
"""

from deep_nets.configs._resnet18_cifar10 import RESNET18_CIFAR10

FLAGS = dict(
    RESNET18_CIFAR10,
    sam_rho=0.1,
    sam_epoch_frac_start=0.0,
    sam_epoch_frac_end=0.9,
)
