"""seminar_fmnist_cnn: the seminar deck's own table (PAPERS.md#seminar-deck): Fashion-MNIST
ConvNet, SGD vs SAM at rho 0.05 with a cosine schedule.

Claim: SAM is slightly better than SGD on Fashion-MNIST with a small ConvNet.
Paper number (the seminar's accuracy): SGD 0.8730, SAM 0.8751.
Command: python -m deep_nets.train --config seminar_fmnist_cnn (SGD); add --sam_rho 0.05 (SAM)
Measured here (2026-11-22, quick profile: width 16, 10% of the training set, 4 epochs, 2000 test
examples, 2 seeds): accuracy SGD 0.725 +- 0.006, SAM 0.712 +- 0.017 (within noise). Full
profile (width 32, 25%, 10 epochs, 3 seeds, 10 000 test examples): SGD 0.841 +- 0.002, SAM
0.827 +- 0.001 (SAM worse: contradicted).
Deviation: the deck does not state its epochs, batch size, learning rate or architecture; we use
our 2-conv `cnn` (width 32), batch 128, lr 0.05, 10 epochs, the original's L2 5e-4, augmentation.
"""

FLAGS = dict(
    dataset="fashion_mnist",
    model="cnn",
    batch_size=128,
    epochs=10,
    lr_max=0.05,
    lr_schedule="cosine",
    l2_reg=5e-4,
    n_eval_train=2000,
    n_sharpness=256,
    sharpness_m=128,
)
