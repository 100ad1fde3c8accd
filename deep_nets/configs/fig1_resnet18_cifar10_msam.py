"""fig1_resnet18_cifar10_msam: Fig. 1 (left) of "Towards Understanding SAM", 128-SAM on CIFAR-10.

Claim: m-SAM with m = 128 lowers the test error of ResNet-18 on CIFAR-10; n-SAM (the perturbation
from another batch) and random perturbations do not.
Paper number (approx., read off the figure): ERM ~5.1%; 128-SAM 4.75 / 4.65 / 4.35 / 4.25 / 4.65%
at rho 0.025 / 0.05 / 0.1 / 0.2 / 0.4; n-SAM ~5.1%.
Command: python -m deep_nets.train --config fig1_resnet18_cifar10_msam --sam_rho 0.2
    n-SAM (the original's, previous batch): add --sam_use_prev_batch; random (the original's):
    --sam_rho 0 --add_weight_perturb_scale S; ERM: --sam_rho 0. Needs the CIFAR-10 python
    batches in --data_dir.
Measured here: not run (about a GPU-day for the rho grid); flags follow the original code.
"""

from deep_nets.configs._resnet18_cifar10 import RESNET18_CIFAR10

FLAGS = dict(
    RESNET18_CIFAR10,
    sam_rho=0.1,
    acc_steps=1,
)
