"""msharpness_resnet18_cifar10: m-sharpness (Foret et al. 2021; Andriushchenko & Flammarion 2022
Fig. 1): test error against m at a fixed rho, ResNet-18 on CIFAR-10, batch 128.

Claim: smaller m generalizes better.
Paper number: the SAM paper shows m in {1, 4, 16, 64, 256} on a small ResNet / CIFAR-10 (error
falls as m shrinks); here m = 128 / acc_steps in {128, 64, 16, 4}.
Command: python -m deep_nets.train --config msharpness_resnet18_cifar10 --acc_steps 32  (m = 4)
Measured here: not run (GPU-days). m = 1 is left out: batch norm in train mode needs > 1 example.
"""

from deep_nets.configs._resnet18_cifar10 import RESNET18_CIFAR10

FLAGS = dict(
    RESNET18_CIFAR10,
    sam_rho=0.1,
    acc_steps=8,
)
