"""quick_mnist1d_msam: the m-SAM run of the quick reproduction stage (analysis/deep_nets.py).

Claim: m-SAM with a small m generalizes better than ERM and than SAM with m = batch
(Andriushchenko & Flammarion 2022, Fig. 1; Foret et al. 2021, m-sharpness).
Paper number: ResNet-18 CIFAR-10 test error ERM ~5.1%, 128-SAM ~4.25% (rho 0.2); n-SAM ~ERM.
Command: python deep_nets/train.py --config quick_mnist1d_msam
    (ERM: add --sam_rho 0 --acc_steps 1; SAM with m = batch: --acc_steps 1; --seed 1)
Measured here (2 seeds, final test error): ERM 32.90 +- 0.14%, SAM (m = 128) 32.40 +- 2.26%,
m-SAM (m = 16) 30.90 +- 0.28%; final train error <= 0.06% (results/deep_nets/claims.csv).
"""

FLAGS = dict(
    dataset="mnist1d",
    model="mlp",
    model_width=128,
    batch_size=128,
    epochs=60,
    lr_max=0.1,
    lr_schedule="cosine",
    l2_reg=5e-4,
    no_data_augm=True,
    sam_rho=0.1,
    acc_steps=8,
    n_sharpness=512,
    sharpness_m=128,
)
