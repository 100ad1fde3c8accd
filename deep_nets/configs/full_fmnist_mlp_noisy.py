"""full_fmnist_mlp_noisy: the full-profile noisy-label run (Fig. 12), CPU.

Claim: as quick_fmnist_mlp_noisy, with 3 seeds, 20% of Fashion-MNIST and 100 epochs.
Paper number (CIFAR-10, 60% noise, approx.): ERM best ~20-30% / last ~49%; SAM best ~10% /
last ~43%.
Command: python deep_nets/train.py --config full_fmnist_mlp_noisy (SAM: --sam_rho 0.1)
Measured here: not run yet (estimate in deep_nets/README.md).
Deviation: MLP on 10 800 Fashion-MNIST examples, 100 epochs (piecewise), no augmentation.
"""

FLAGS = dict(
    dataset="fashion_mnist",
    model="mlp",
    model_width=256,
    batch_size=128,
    epochs=100,
    lr_max=0.05,
    lr_schedule="piecewise",
    l2_reg=5e-4,
    no_data_augm=True,
    frac_train=0.2,
    p_label_noise=0.6,
    noise_type="sym",
    n_eval_train=2000,
    n_sharpness=256,
    sharpness_m=128,
)
