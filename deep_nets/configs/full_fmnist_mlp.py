"""full_fmnist_mlp: the base run of the full-profile deep-net experiments (CPU, <= 2 hours).

Claim: as quick_mnist1d_mlp (Fig. 1, m-sharpness, Fig. 9, convergence, LookSAM), with 3 seeds and
the 10 000 Fashion-MNIST test examples so that a gap of about one point clears 2 standard errors.
Paper number: ResNet-18 CIFAR-10 (PAPERS.md#deep-nets-fig1): ERM ~5.1%, 128-SAM 4.25-4.75%,
n-SAM ~5.1%.
Command: python -m deep_nets.train --config full_fmnist_mlp (python -m analysis.reproduce
    --profile full --only deep_nets for the sweep)
Measured here (2026-11-22, full profile, 3 seeds): ERM 13.50 +- 0.48% test error at the best-
validation epoch; SAM (m = 128) 13.19%, m-SAM (m = 16) 13.36%, n-SAM 13.25%: within noise;
m = 4 14.25% (worse). deep_nets/README.md has every row.
Deviation: an MLP on 20% of Fashion-MNIST (10 800 examples), 30 epochs, cosine, no augmentation.
"""

FLAGS = dict(
    dataset="fashion_mnist",
    model="mlp",
    model_width=256,
    batch_size=128,
    epochs=30,
    lr_max=0.05,
    lr_schedule="cosine",
    l2_reg=5e-4,
    no_data_augm=True,
    frac_train=0.2,
    n_eval_train=2000,
    n_sharpness=512,
    sharpness_m=128,
)
