"""fig12_noisy_labels_cifar10: Fig. 12 of "Towards Understanding SAM": 60% symmetric label noise.

Claim: with noisy labels SAM's best test error is far below ERM's, but both eventually memorize
the noisy labels (train error on the noisy examples -> 0, logged as train_err_noisy), SAM later.
Paper number (approx.): CIFAR-10 ERM best ~20-30% / last ~49%; SAM best ~10% / last ~43%.
Command: python -m deep_nets.train --config fig12_noisy_labels_cifar10 (ERM: --sam_rho 0)
Measured here: not run (1000 epochs on a GPU).
"""

from deep_nets.configs._resnet18_cifar10 import RESNET18_CIFAR10

FLAGS = dict(
    RESNET18_CIFAR10,
    epochs=1000,
    sam_rho=0.1,
    p_label_noise=0.6,
    noise_type="sym",
)
