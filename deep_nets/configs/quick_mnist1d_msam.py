"""quick_mnist1d_msam: the m-SAM run of the quick reproduction stage (analysis/deep_nets.py).

Claim: m-SAM with a small m generalizes better than ERM and than SAM with m = batch
(Andriushchenko & Flammarion 2022, Fig. 1; Foret et al. 2021, m-sharpness).
Paper number: ResNet-18 CIFAR-10 test error ERM ~5.1%, 128-SAM ~4.25% (rho 0.2); n-SAM ~ERM.
Command: python deep_nets/train.py --config quick_mnist1d_msam
    (ERM: add --sam_rho 0 --acc_steps 1; SAM with m = batch: --acc_steps 1)
Measured here: see results/deep_nets/claims.csv after `make reproduce` (mnist1d MLP, 12 epochs,
one seed; the numbers are recorded in deep_nets/README.md).
"""

FLAGS = dict(
    dataset="mnist1d",
    model="mlp",
    model_width=128,
    batch_size=64,
    epochs=12,
    lr_max=0.05,
    lr_schedule="cosine",
    l2_reg=5e-4,
    sam_rho=0.05,
    acc_steps=8,
    n_sharpness=512,
    sharpness_m=64,
)
