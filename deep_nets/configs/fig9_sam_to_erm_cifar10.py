"""fig9_sam_to_erm_cifar10: Fig. 9 of "Towards Understanding SAM": SAM for most of training, then
ERM (the reverse switch of fig9_erm_to_sam_cifar10).

Claim: SAM -> ERM keeps most of SAM's gain over ERM.
Paper number (approx.): CIFAR-10 ERM ~4.65%, SAM -> ERM ~3.95%.
Command: python deep_nets/train.py --config fig9_sam_to_erm_cifar10
Measured here: not run (GPU-days).
"""

FLAGS = dict(
    dataset="cifar10",
    model="resnet18",
    batch_size=128,
    epochs=200,
    lr_max=0.1,
    lr_schedule="piecewise",
    l2_reg=5e-4,
    sam_rho=0.1,
    sam_epoch_frac_start=0.0,
    sam_epoch_frac_end=0.9,
)
