"""quick_fmnist_mlp_noisy: the quick noisy-label run (Fig. 12 of "Towards Understanding SAM").

Claim: with 60% symmetric label noise SAM's best test error is clearly below ERM's; both end up
memorizing the noisy labels (train error on the noisy examples -> 0), SAM later; early stopping
(the best-validation epoch) matters.
Paper number (CIFAR-10, ResNet, 1000 epochs, approx.): ERM best ~20-30% / last ~49% test error;
SAM best ~10% / last ~43%.
Command: python -m deep_nets.train --config quick_fmnist_mlp_noisy (ERM; SAM: --sam_rho 0.1)
Measured here (2026-11-22, seed 0, this config): ERM best 27.4% / last 59.0% test error, train
error on the noisy examples 0.3% at the end; SAM (rho 0.1) best 25.5% / last 55.8%, noisy train
error 2.8% at the end (it crossed 50% at epoch ~20 vs ~15 for ERM). With 10% of the data and 60
epochs both stayed far from memorizing (ERM 20%, SAM 40% noisy train error): too few high-lr epochs.
Deviation: an MLP on 5% of Fashion-MNIST (2700 examples), no augmentation, 100 epochs with the
original's piecewise schedule (/10 at 50%, /100 at 75%), instead of ResNet on CIFAR-10 for 1000.
Evaluated on all 6000 validation and 10 000 test images (the numbers above were measured with the
first 5000 of each, the cap this config had until the runs started storing per-example errors).
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
    frac_train=0.05,
    p_label_noise=0.6,
    noise_type="sym",
    n_eval_train=2000,
    n_sharpness=256,
    sharpness_m=128,
)
