"""The core demo's budgets: SGD, SAM, ASAM and LookSAM on MNIST-1D with an MLP, per profile.

Every run is a ``deep_nets/train.py`` run (``analysis.core.runs``): ``BASE`` holds the trainer
flags every optimizer shares (the demo's own CPU-scale setting: constant learning rate 0.05,
momentum 0.9, no L2, no augmentation, width 128, batch 128), ``METHODS`` the flags that make
each optimizer. The demo is the core's own check, not one of the papers' experiments (those are
deep_nets' paper profile): it has no paper-scale setting, and ``paper`` reuses full's runs (the
same flags, so the same run directories).

A profile is a dict: ``base`` (trainer flags), ``seeds``, ``workers`` (torch threads per run),
``hessian_examples`` (training examples of the lambda_max estimate), ``timing_rounds`` (rounds
of the interleaved step timing of the cost row, ``analysis.core.measure.step_cost``).
"""

from __future__ import annotations

from typing import Any

from suite.profiles import check_table

FAMILY = "core"
OPTIMIZERS = ("sgd", "sam", "asam", "looksam")

BASE: dict[str, Any] = dict(
    dataset="mnist1d",
    model="mlp",
    model_width=128,
    batch_size=128,
    epochs=40,
    lr_max=0.05,
    lr_schedule="constant",
    momentum=0.9,
    l2_reg=0.0,
    no_data_augm=True,
)
# rho fixed before any result was seen: SAM's CIFAR default 0.05; ASAM's 0.5 (its paper uses
# about 10x SAM's rho); LookSAM at SAM's rho, k = 5 and alpha 0.7 (its paper's settings)
METHODS: dict[str, dict[str, Any]] = {
    # SGD keeps the weights of every epoch: the loss-matched comparison takes SGD at the first
    # epoch whose training loss is at or below SAM's final one
    "sgd": {"save_model_each_k_epochs": 1},
    "sam": {"sam_rho": 0.05},
    "asam": {"sam_rho": 0.5, "sam_variant": "asam", "asam_eta": 0.01},
    "looksam": {"sam_rho": 0.05, "sam_variant": "looksam", "looksam_k": 5, "looksam_alpha": 0.7},
}
LABELS = {"sgd": "SGD", "sam": "SAM", "asam": "ASAM", "looksam": "LookSAM (k=5)"}

_FULL: dict[str, Any] = dict(
    base={**BASE, "epochs": 100},
    seeds=[0, 1, 2, 3, 4],
    workers=1,
    hessian_examples=1000,
    timing_rounds=300,
)
PROFILES = check_table(
    {
        # seconds: 2 epochs of a width-16 MLP on 30% of the training set, small evaluations
        "test": dict(
            base={
                **BASE,
                "epochs": 2,
                "model_width": 16,
                "frac_train": 0.3,
                "n_eval_train": 200,
                "n_sharpness": 32,
                "sharpness_m": 32,
            },
            seeds=[0, 1],
            workers=1,
            hessian_examples=64,
            timing_rounds=10,
        ),
        "quick": dict(  # ~1.5 CPU minutes of training (92 CPU s measured, one thread per run)
            base=BASE, seeds=[0, 1, 2], workers=1, hessian_examples=1000, timing_rounds=100
        ),
        "full": _FULL,
        "paper": _FULL,
    },
    FAMILY,
)
