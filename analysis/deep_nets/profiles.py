"""The budgets of the deep-net experiments: ``test`` (pytest), ``quick`` (``make reproduce``),
``full`` (CPU, <= 2 hours, >= 3 seeds) and ``paper`` (the original setups, GPU + CIFAR on disk).

Each profile names its base runs through the named configs of ``deep_nets/configs/`` (the header of
each config states the claim, the paper's number, the command and what it measured here) and adds
the sweep: seeds, the rho grid of Fig. 1 (rho tuned per seed on validation), the fixed rho of
the other experiments (fixed here, before any result is seen), the small m, the m grid, the
switch fraction of Fig. 9, LookSAM's k.
"""

from __future__ import annotations

from typing import Any

from deep_nets.config import load_named_config
from suite.profiles import check_table


def _cfg(name: str, **overrides: Any) -> dict[str, Any]:
    return {**load_named_config(name), **overrides}


def _common(base: dict, noisy: dict, seminar: dict, **sweep: Any) -> dict[str, Any]:
    return dict(base=base, noisy=noisy, seminar=seminar, **sweep)


_TEST_EVAL = dict(n_eval=200, n_eval_train=200, n_sharpness=32, sharpness_m=32)

# Fig. 1's rho grid on the CPU profiles, fixed before any run: a factor 10 below and 2.5 above the
# paper's optimum (0.2 for 128-SAM on CIFAR-10), one grid for every perturbing method; a seed whose
# validation choice is a grid end adds one step (analysis.deep_nets.fig1: the boundary rule).
RHO_GRID = [0.02, 0.05, 0.1, 0.2, 0.5]

PROFILES: dict[str, dict[str, Any]] = {
    # seconds: every experiment end to end (pytest and the notebook test)
    "test": _common(
        base=_cfg(
            "quick_mnist1d_mlp",
            model_width=16,
            batch_size=32,
            epochs=2,
            frac_train=0.2,
            **_TEST_EVAL,
        ),
        noisy=_cfg(
            "quick_fmnist_mlp_noisy",
            model_width=16,
            batch_size=32,
            epochs=3,
            frac_train=0.02,
            **_TEST_EVAL,
        ),
        seminar=_cfg(
            "seminar_fmnist_cnn",
            model_width=4,
            batch_size=32,
            epochs=1,
            frac_train=0.01,
            **_TEST_EVAL,
        ),
        # switch 0.75: with 2 epochs and the original's count (both ends included) ERM -> SAM is
        # SAM in epoch 2 only, SAM -> ERM in epoch 1 only (0.5 would make ERM -> SAM all SAM)
        seeds=[0],
        rhos=[0.05, 0.1],  # two points: a grid end is always picked, so the extension runs too
        rho=0.1,
        small_acc=4,
        accs=[1, 4],
        switch=0.75,
        rho_unnorm=0.1,
        noisy_acc=2,
        looksam_k=5,
        workers=1,
    ),
    # make reproduce: all seven experiments in ~7 CPU-minutes, one thread (see deep_nets/README)
    "quick": _common(
        base=_cfg("quick_mnist1d_mlp"),
        noisy=_cfg("quick_fmnist_mlp_noisy"),
        seminar=_cfg(
            "seminar_fmnist_cnn",
            model_width=16,
            frac_train=0.1,
            epochs=4,
            n_eval_train=1000,
        ),
        seeds=[0, 1],
        rhos=RHO_GRID,
        rho=0.1,
        small_acc=4,
        accs=[1, 2, 4],
        # Fig. 9's switch once ERM fits its training set (train error ~0 from epoch ~30 of
        # 60), where the cosine lr (0.05) still lets the post-switch phase learn; the paper's
        # switch at 1000 of 1100 epochs trains ~35k steps after it, which a CPU budget cannot
        # (at 75% here the weights moved 1.2% after the switch)
        switch=0.5,
        rho_unnorm=0.1,
        noisy_acc=2,
        looksam_k=5,
        workers=1,
    ),
    # CPU, <= 2 hours (estimate in deep_nets/README): 3 seeds and 10 000 test examples, so that
    # a 1-point gap clears 2 standard errors
    "full": _common(
        base=_cfg("full_fmnist_mlp"),
        noisy=_cfg("full_fmnist_mlp_noisy"),
        seminar=_cfg("seminar_fmnist_cnn", frac_train=0.25),
        seeds=[0, 1, 2],
        rhos=RHO_GRID,
        rho=0.1,
        small_acc=8,
        accs=[1, 4, 8, 32],
        switch=0.5,  # as quick (its reason); not measured on this base
        rho_unnorm=0.1,
        noisy_acc=4,
        looksam_k=5,
        workers=1,
    ),
}

# The paper profile: the original setups (PAPERS.md#deep-nets-setup) as named configs, for a
# GPU with the data on disk (``make reproduce PROFILE=paper``, or ``python -m analysis.deep_nets
# --profile paper``). The experiments build the same sweeps on these bases.
PAPER_CONFIGS = {
    "fig1": ["fig1_resnet18_cifar10_msam", "fig1_resnet34gn_cifar100_msam"],
    "m_sharpness": ["msharpness_resnet18_cifar10"],
    "finetune": ["fig9_erm_to_sam_cifar10", "fig9_sam_to_erm_cifar10"],
    "noisy": ["fig12_noisy_labels_cifar10"],
    "convergence": ["convergence_resnet18_cifar10"],
    "looksam": ["looksam_resnet18_cifar10"],
    "seminar": ["seminar_fmnist_cnn"],
}
PROFILES["paper"] = _common(
    base=_cfg("fig1_resnet18_cifar10_msam"),
    noisy=_cfg("fig12_noisy_labels_cifar10"),
    seminar=_cfg("seminar_fmnist_cnn"),
    # Fig. 1's rho grid; m = 128 / acc_steps in {128, 64, 16, 4}; the switch at 90% of training
    seeds=[0, 1, 2],
    rhos=[0.025, 0.05, 0.1, 0.2, 0.4],
    rho=0.1,
    small_acc=8,
    accs=[1, 2, 8, 32],
    switch=0.9,
    rho_unnorm=0.1,
    noisy_acc=8,
    looksam_k=5,
    workers=0,
)
for _name, _p in PROFILES.items():
    _p.setdefault("seminar_rho", 0.05)
    # LookSAM at the paper's alpha 0.7 (it underfits the MLP: deep_nets/README.md) and at 0.3, the
    # largest of {0.7, 0.3, 0.1} that fitted seed 0's training set (training error alone)
    _p.setdefault("looksam_alphas", [0.7, 0.3])
    # What the seminar rows can test at each budget, declared with the profile (not after the
    # results): the deck trained its ConvNet on all of Fashion-MNIST for epochs it does not state.
    if _name in ("test", "quick"):
        _small = (
            "not comparable at this profile: the seminar ConvNet trains for "
            f"{_p['seminar']['epochs']} epoch(s) on {_p['seminar']['frac_train']:.0%} of "
            "Fashion-MNIST, far from converged (the deck's accuracies are ~0.87)"
        )
        _p.setdefault("seminar_not_comparable", _small)
        _p.setdefault("seminar_level_not_comparable", _small)
    elif _name == "full":
        _p.setdefault("seminar_not_comparable", "")
        _p.setdefault(
            "seminar_level_not_comparable",
            "not comparable at this profile: the deck's accuracies are of all of Fashion-MNIST in "
            "its own (unstated) setting; this profile trains on a quarter of it",
        )
    else:
        _p.setdefault("seminar_not_comparable", "")
        _p.setdefault("seminar_level_not_comparable", "")
    # the cost row's interleaved timing: repetitions x steps per block and method
    _p.setdefault(
        "looksam_timing", dict(reps=6, steps=3) if _name == "test" else dict(reps=20, steps=5)
    )
check_table(PROFILES, "deep_nets")
