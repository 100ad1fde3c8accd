"""convergence_resnet18_cifar10: convergence of SAM variants ("Towards Understanding SAM" §4.2
convergence): training loss per step of ERM, SAM, m-SAM and unnormalized SAM with a constant rho.

Claim: m-SAM (and unnormalized SAM with constant rho) still drive the training loss to near zero.
Paper number: qualitative (PAPERS.md#convergence): 1-SAM / m-SAM reach near-zero training
loss in practice, hence they eventually memorize noisy labels too.
Command: python -m deep_nets.train --config convergence_resnet18_cifar10 --no_data_augm
    (unnormalized: add --sam_no_grad_norm; ERM: --sam_rho 0 --acc_steps 1)
Measured here: not run (GPU-days).
"""

from deep_nets.configs._resnet18_cifar10 import RESNET18_CIFAR10

FLAGS = dict(
    RESNET18_CIFAR10,
    sam_rho=0.1,
    acc_steps=8,
)
