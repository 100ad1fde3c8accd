"""fmnist_resnet_tiny_msam: m-SAM (m = 16) on Fashion-MNIST with a small GroupNorm ResNet.

Claim: SAM improves test error on Fashion-MNIST (Foret et al. 2021: WRN-28-10, 3.98% vs 4.57% SGD,
rho 0.05), and small m helps most (Andriushchenko & Flammarion 2022).
Paper number: 3.98% (SAM) vs 4.57% (SGD), WRN-28-10, 200 epochs, basic augmentation.
Command: python -m deep_nets.train --config fmnist_resnet_tiny_msam
    (baseline: add --sam_rho 0 --acc_steps 1)
Measured here: not run to completion in this suite's CPU budget (about 1 h per run on 2 cores);
the quick stage uses mnist1d instead.
"""

FLAGS = dict(
    dataset="fashion_mnist",
    model="resnet_tiny_gn",
    batch_size=128,
    epochs=30,
    lr_max=0.05,
    lr_schedule="cosine",
    l2_reg=5e-4,
    sam_rho=0.05,
    acc_steps=8,
)
