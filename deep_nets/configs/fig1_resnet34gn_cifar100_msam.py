"""fig1_resnet34gn_cifar100_msam: Fig. 1 (right) of "Towards Understanding SAM" on CIFAR-100.

Claim: 128-SAM lowers the test error of a GroupNorm ResNet-34 on CIFAR-100, more with larger rho.
Paper number (approx.): ERM ~22.8%; 128-SAM 22.0 / 21.5 / 20.9 / 20.4 / 20.2% at rho
0.025 / 0.05 / 0.1 / 0.2 / 0.4.
Command: python -m deep_nets.train --config fig1_resnet34gn_cifar100_msam --sam_rho 0.4
Measured here: not run (GPU-days).
"""

FLAGS = dict(
    dataset="cifar100",
    model="resnet34_gn",
    batch_size=128,
    epochs=200,
    lr_max=0.1,
    lr_schedule="piecewise",
    l2_reg=5e-4,
    sam_rho=0.2,
)
