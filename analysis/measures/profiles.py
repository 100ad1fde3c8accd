"""The budgets of the measures stage, one table per experiment, keyed by ``suite.profiles``' names.

Figures 1 and 2 (``PROFILES``): the spectrum runs are ``deep_nets/train.py`` runs of the deep-net
stage's own MNIST-1D MLP recipe (the named config ``quick_mnist1d_mlp``: width 128, 60 epochs,
cosine from lr 0.1, L2 5e-4, no augmentation; it fits its training set, so the Hessians are
measured at minima), ERM and SAM (``rho``) per seed, plus one ERM -> SAM run (seed 0, SAM from the
``switch`` fraction of the epochs on: the ERM run's first epochs, then SAM on the same cosine
schedule). ``save_model_each_k_epochs`` keeps the weights the spectrum is measured on
(``eval_epochs``, a subset of the epochs it keeps: 1-5 and every k-th). ``hessian``: the
``deep_nets.eval_sharpness --measure hessian`` settings; ``slice_points``: points of the 1-D
slice of every run and of each axis of seed 0's 2-D slice.

Figure 3 (``FIG3_SETTINGS``) and Figure 4 (``DIAG``, ``DIAG_SEEDS``): see their modules.
Every value here was fixed before the results it decides were seen.
"""

from __future__ import annotations

from typing import Any

from deep_nets.config import load_named_config
from suite.profiles import check_table

FAMILY = "measures"


def _base(**overrides: Any) -> dict[str, Any]:
    return {**load_named_config("quick_mnist1d_mlp"), **overrides}


_QUICK: dict[str, Any] = dict(
    base=_base(save_model_each_k_epochs=10),
    seeds=[0, 1, 2],
    rho=0.1,
    switch=0.75,
    eval_epochs=(1, 5, 10, 20, 40, 60),
    hessian=dict(n_examples=1024, top_k=5, max_iter=60, tol=1e-3, density_steps=80),
    slice_points=(41, 15),
    workers=1,
)
_FULL = {**_QUICK, "seeds": [0, 1, 2, 3, 4], "eval_epochs": (1, 2, 5, 10, 20, 30, 40, 50, 60)}
# The paper profile runs full's MLP: the SAM paper's WRN-40-10 on CIFAR-10 (GPU days) is not run
# here (its claims row says "not run"); Figure 3 then correlates the deep_nets paper profile's runs.
PROFILES: dict[str, dict[str, Any]] = check_table(
    {
        "test": dict(
            base=_base(
                model_width=16,
                batch_size=32,
                epochs=2,
                frac_train=0.2,
                n_eval=200,
                n_eval_train=200,
                n_sharpness=32,
                sharpness_m=32,
                save_model_each_k_epochs=1,
            ),
            seeds=[0, 1],
            rho=0.1,
            # 2 epochs and the original's count (both ends included): SAM in epoch 2 only
            switch=0.75,
            eval_epochs=(1, 2),
            hessian=dict(n_examples=64, top_k=5, max_iter=15, tol=1e-3, density_steps=10),
            slice_points=(11, 5),
            workers=1,
        ),
        "quick": _QUICK,
        "full": _FULL,
        "paper": _FULL,
    },
    FAMILY,
)


def saved_epochs(base: dict[str, Any]) -> list[int]:
    """The epochs whose weights the trainer keeps (``epoch_<e>.pt``: epochs 1-5 and every k-th
    with ``--save_model_each_k_epochs k``; deep_nets/train.py ``_end_epoch``)."""
    k, n = int(base.get("save_model_each_k_epochs") or 0), int(base["epochs"])
    return [e for e in range(1, n + 1) if k > 0 and (e % k == 0 or e <= 5)]


for _name, _p in PROFILES.items():  # a measured epoch the trainer does not keep fails on import
    if not set(_p["eval_epochs"]) <= set(saved_epochs(_p["base"])) or (
        max(_p["eval_epochs"]) != _p["base"]["epochs"]
    ):
        raise ValueError(
            f"{FAMILY} profile {_name}: eval_epochs {_p['eval_epochs']} must be epochs the trainer "
            f"keeps ({saved_epochs(_p['base'])}) and end at the last epoch"
        )

# ------------------------------------------------------ Figure 3: m-sharpness vs test error
# Fixed before any result was seen. m = 128 is the deep-net runs' batch size (quick/full); the
# worst case by projected ascent (L2 ball, ``steps`` steps of rho), loss sharpness. The quick
# budget (<= 60 s for ~36 runs on one core) sets 256 examples and 5 ascent steps.
FIG3_SETTINGS: dict[str, dict[str, Any]] = check_table(
    {
        "test": dict(ms=(4, 32), rhos=(0.1,), n_examples=64, steps=2, boot=200),
        "quick": dict(
            ms=(4, 16, 64, 128), rhos=(0.05, 0.1, 0.2), n_examples=256, steps=5, boot=2000
        ),
        "full": dict(
            ms=(4, 16, 64, 128), rhos=(0.05, 0.1, 0.2), n_examples=1024, steps=10, boot=2000
        ),
        "paper": dict(
            ms=(4, 16, 64, 128), rhos=(0.05, 0.1, 0.2), n_examples=1024, steps=10, boot=2000
        ),
    },
    FAMILY,
)

# ---------------------------------------- Figure 4: exact lambda_max of small nets (GD vs SAM)
# Diagonal linear nets at the original notebook's cell-3 setting (PAPERS.md#diagonal-notebook):
# n = 20, d = 30, sparsity 3, alpha 0.1, gamma 10/d, 10^4 + 1 steps; rho 0.1 in the original
# convention for both SAM variants (1-SAM's suite rho is 0.2). One data set per seed.
DIAG = dict(n=20, d=30, alpha=0.1, gamma=10 / 30, iters=10_001, rho=0.1)
DIAG_SEEDS = check_table(
    {
        "test": [0, 1, 2],
        "quick": [0, 1, 2, 3, 4],
        "full": list(range(10)),
        "paper": list(range(10)),
    },
    FAMILY,
)
