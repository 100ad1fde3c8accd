"""quick_mnist1d_mlp: the base run of the quick deep-net experiments (Fig. 1, m-sharpness, Fig. 9,
convergence, LookSAM) in ``make reproduce`` (analysis/deep_nets, profile quick).

Claim: the experiments' directions (m-SAM with small m beats ERM; n-SAM and random perturbations
do not; ERM -> SAM improves; m-SAM still fits the training set; LookSAM keeps SAM's gain cheaply),
shown on a CPU in minutes; the quick profile shows the pipeline, the full profile settles claims.
Paper number: ResNet-18 CIFAR-10 (PAPERS.md#deep-nets-fig1): ERM ~5.1%, 128-SAM 4.25-4.75%,
n-SAM ~5.1%.
Command: python -m deep_nets.train --config quick_mnist1d_mlp (ERM); the sweep adds --sam_rho,
    --acc_steps, --sam_variant, --sam_use_prev_batch, --add_weight_perturb_scale
    (python -m analysis.reproduce --only deep_nets)
Measured here: see results/deep_nets/claims.csv and deep_nets/README.md (Experiments).
Deviation: a 2-layer MLP on mnist1d (the standard 4000 training signals; 10 000 validation and
100 000 test signals generated with other seeds, so gaps are decided; offline) instead
of ResNet-18 on CIFAR-10, 60 epochs with a cosine schedule, no augmentation (the MLP interpolates
the training set, the regime where SAM's implicit bias matters).
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
    n_eval_train=2000,
    n_sharpness=512,
    sharpness_m=128,
)
