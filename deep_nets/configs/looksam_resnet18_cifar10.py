"""looksam_resnet18_cifar10: LookSAM (Liu et al. 2022) vs SAM vs ERM, k = 5, ResNet-18 CIFAR-10.

Claim: LookSAM keeps most of SAM's gain at a fraction of SAM's extra cost.
Paper number (ViT-S/32 ImageNet): AdamW 68.1% at 5154 img/s, SAM 68.9% at 2566 img/s, LookSAM
68.8% at 4273 img/s, i.e. LookSAM's extra time per image is 0.20 of SAM's.
Command: python -m deep_nets.train --config looksam_resnet18_cifar10 (SAM: --sam_variant sam)
Measured here: not run (GPU-days). Deviation: CIFAR-10 ResNet-18 with SGD instead of ViT/ImageNet
with AdamW; alpha 0.7 (the public code's default).
"""

from deep_nets.configs._resnet18_cifar10 import RESNET18_CIFAR10

FLAGS = dict(
    RESNET18_CIFAR10,
    sam_rho=0.1,
    sam_variant="looksam",
    looksam_k=5,
    looksam_alpha=0.7,
)
