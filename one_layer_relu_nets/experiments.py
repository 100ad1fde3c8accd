"""The three experiments of this family, as named ``Config``s per profile (quick: CPU minutes;
full: the reference's scale). ``analysis.one_layer_relu_nets.reproduce`` runs them.

Experiment 1 -- implicit bias on the reference 12-point 1-D data (REFERENCE.md 4.3).
    Claim (reference notebook / paper figure): SAM's fitted functions are simpler (fewer kinks)
    than GD's. Reference: width 100, reference init, loss 0.5 sum of squares, lr 5e-5, up to 1e6
    iterations or loss <= 1e-5, seeds 0-4, normalized n-SAM rho 0.3, lr decayed linearly for SAM
    only. Here every algorithm (GD, n-SAM, 1-SAM) uses the same linearly decaying lr; a second
    comparison decays rho linearly too, so that SAM can reach the loss threshold as well (equal
    training loss).
    Command (full): python one_layer_relu_nets/train.py --algorithms gd nsam 1sam --rhos 0.3
        --lr 5e-5 --lr_schedule linear --iterations 1000000 --num_seeds 5 --out_dir ...

Experiment 2 -- teacher-student in d = 5 (3 teacher neurons, width-50 student, 20 training
    points, mean loss): test loss vs rho for GD, n-SAM and 1-SAM (normalized ascent); the
    nonlinear counterpart of the diagonal-network result (REFERENCE.md 4.2: 1-SAM improves the
    test loss with rho, n-SAM does not).

Experiment 3 -- convergence on the same teacher-student task (REFERENCE.md 4.2, convergence):
    unnormalized SAM with a constant rho reaches (near) zero training loss like GD; normalized SAM
    with a constant rho stalls at a loss that shrinks with rho; normalized SAM with a decaying
    rho_t = rho / sqrt(1 + t) converges.
"""

from __future__ import annotations

from dataclasses import replace

from one_layer_relu_nets.training import Config

PROFILES = ("quick", "full", "tiny")  # tiny: for the tests only


def _sizes(profile: str) -> dict:
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {PROFILES} (got {profile!r})")
    if profile == "tiny":
        return {"it1": 150, "seeds1": [0, 1], "it2": 60, "seeds2": [0], "it3": 60, "seeds3": [0]}
    if profile == "quick":
        return {
            "it1": 30_000,
            "seeds1": [0, 1, 2, 3, 4],
            "it2": 4_000,
            "seeds2": [0, 1, 2],
            "it3": 3_000,
            "seeds3": [0, 1],
        }
    return {
        "it1": 1_000_000,
        "seeds1": [0, 1, 2, 3, 4],
        "it2": 50_000,
        "seeds2": [0, 1, 2, 3, 4],
        "it3": 50_000,
        "seeds3": [0, 1, 2, 3, 4],
    }


TEACHER = dict(
    task="teacher",
    d=5,
    teacher_width=3,
    n_train=20,
    n_test=1000,
    data_seed=0,
    width=50,
    init="standard",
    init_scale=1.0,
    reduction="mean",
    lr=0.1,
    lr_schedule="constant",
)


def experiment_configs(profile: str) -> dict[str, dict[str, Config]]:
    """{experiment: {comparison name: Config}} (out_dir left unset)."""
    s = _sizes(profile)
    ref = Config(
        task="reference1d",
        width=100,
        init="reference",
        algorithms=["gd", "nsam", "1sam"],
        rhos=[0.3],
        normalize=True,
        lr=5e-5,
        lr_schedule="linear",
        iterations=s["it1"],
        loss_threshold=1e-5,
        reduction="sum",
        seeds=s["seeds1"],
        n_logs=60,
    )
    exp1 = {
        "exp1_const_rho": ref,
        "exp1_decay_rho": replace(ref, algorithms=["nsam", "1sam"], rho_schedule="linear"),
    }
    teacher = Config(
        **TEACHER, iterations=s["it2"], loss_threshold=0.0, seeds=s["seeds2"], n_logs=40
    )
    exp2 = {
        "exp2_teacher": replace(
            teacher, algorithms=["gd", "nsam", "1sam"], rhos=[0.01, 0.03, 0.1, 0.3], normalize=True
        ),
    }
    conv = replace(teacher, iterations=s["it3"], seeds=s["seeds3"], n_logs=60)
    exp3 = {
        "exp3_unnormalized": replace(
            conv, algorithms=["gd", "nsam", "1sam"], rhos=[0.03, 0.1], normalize=False
        ),
        "exp3_normalized": replace(
            conv, algorithms=["nsam", "1sam"], rhos=[0.01, 0.03, 0.1], normalize=True
        ),
        "exp3_decaying": replace(
            conv, algorithms=["nsam", "1sam"], rhos=[0.1], normalize=True, rho_schedule="inv_sqrt"
        ),
    }
    return {"exp1": exp1, "exp2": exp2, "exp3": exp3}
