"""quick_fmnist_mlp_noisy: the quick noisy-label run (Fig. 12 of "Towards Understanding SAM").

Claim: with 60% symmetric label noise SAM's best test error is clearly below ERM's; both end up
memorizing the noisy labels (train error on the noisy examples -> 0), SAM later; early stopping
(the best-validation epoch) matters.
Paper number (CIFAR-10, ResNet, 1000 epochs, approx.): ERM best ~20-30% / last ~49% test error;
SAM best ~10% / last ~43%.
Command: python deep_nets/train.py --config quick_fmnist_mlp_noisy (ERM; SAM: --sam_rho 0.1)
Measured here (2026-11-22, 80 epochs, 1 seed, before this config was fixed at 60 epochs): ERM best
23.5% / last 57.0%, SAM best 19.7% / last 49.2%, m-SAM (m = 32) best 20.6% / last 39.9%.
Deviation: an MLP on 10% of Fashion-MNIST (5400 examples), no augmentation, 60 epochs with the
original's piecewise schedule (/10 at 50%, /100 at 75%), instead of ResNet on CIFAR-10 for 1000.
"""

FLAGS = dict(
    dataset="fashion_mnist",
    model="mlp",
    model_width=256,
    batch_size=128,
    epochs=60,
    lr_max=0.05,
    lr_schedule="piecewise",
    l2_reg=5e-4,
    no_data_augm=True,
    frac_train=0.1,
    p_label_noise=0.6,
    noise_type="sym",
    n_eval_train=2000,
    n_sharpness=256,
    sharpness_m=128,
)
