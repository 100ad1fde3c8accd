"""The fixed small runs whose exact metrics pin the deep-net trainer's behaviour.

``python -m tests.deep_pinned.make`` runs each variant (in float64; ``FLOAT32_VARIANTS`` in
float32) and writes ``pinned.json`` next to this file; ``tests/test_deep_pinned.py`` reruns them
and asserts the same numbers within a tolerance far above float64 round-off (portable across
CPUs and thread counts) and far below any change of behaviour. An entry is regenerated only when
a change of behaviour is intended, and the commit says which and why.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch

# mnist1d MLP: 360 training examples, batch 32 -> 11 steps per epoch; no batch norm.
MLP = dict(
    dataset="mnist1d",
    model="mlp",
    model_width=16,
    epochs=2,
    batch_size=32,
    frac_train=0.1,
    lr_max=0.05,
    workers=1,
    n_eval_train=128,
    n_eval=128,
    n_sharpness=64,
    device="cpu",
    l2_reg=0.0,
    # The behaviour of the code these runs were first pinned with, where it was not the
    # original's: PyTorch's default init, the L2 term on weights only, the logged sharpness at the
    # training m (set per variant below), clean validation labels (set where there is noise).
    init="pytorch",
)
# Fashion-MNIST PreAct ResNet with batch norm, width 4: 540 training examples -> 16 steps.
BN = dict(
    MLP,
    dataset="fashion_mnist",
    model="resnet_tiny",
    model_width=4,
    frac_train=0.01,
    epochs=1,
    n_eval_train=64,
    n_eval=64,
)

VARIANTS: dict[str, dict[str, Any]] = {
    "erm": dict(MLP),
    "erm_l2": dict(MLP, l2_reg=5e-3, l2_scope="weights"),
    "sam": dict(MLP, sam_rho=0.05),
    "msam": dict(MLP, sam_rho=0.05, acc_steps=4),
    "msam_l2": dict(MLP, sam_rho=0.05, acc_steps=4, l2_reg=5e-3, l2_scope="weights"),
    "nsam_other": dict(MLP, sam_rho=0.05, sam_perturb_batch="other"),
    "random": dict(MLP, sam_rho=0.05, sam_variant="random"),
    "asam": dict(MLP, sam_rho=0.5, sam_variant="asam"),
    "looksam": dict(MLP, sam_rho=0.05, sam_variant="looksam", looksam_k=3),
    "unnormalized": dict(MLP, sam_rho=0.05, acc_steps=2, sam_no_grad_norm=True),
    "multistep": dict(MLP, sam_rho=0.05, acc_steps=2, sam_iters=3, sam_step_size_mult=0.5),
    "mult_iters1": dict(MLP, sam_rho=0.05, sam_step_size_mult=0.5),
    "erm_to_sam": dict(MLP, epochs=4, sam_rho=0.05, sam_epoch_frac_start=0.5),
    "sam_to_erm": dict(MLP, epochs=4, sam_rho=0.05, sam_epoch_frac_end=0.5),
    "cyclic_mid_eval": dict(MLP, sam_rho=0.05, lr_schedule="cyclic", eval_iter_freq=4),
    "label_noise": dict(MLP, p_label_noise=0.3, sam_rho=0.05, acc_steps=2),
    "bn_erm": dict(BN),
    "bn_sam": dict(BN, sam_rho=0.05),
    "bn_msam": dict(BN, sam_rho=0.05, acc_steps=4, sam_iters=2),
}
for _v in VARIANTS.values():
    _v.setdefault("sharpness_m", _v["batch_size"] // _v.get("acc_steps", 1))
    if _v.get("p_label_noise", 0) > 0:
        _v.setdefault("clean_val", True)

# Pinned after the parity work (issue 9): today's defaults (the original's init, L2 on every
# parameter, noisy validation labels, the logged sharpness at a fixed m, SWA) and the new flags.
NOW = {k: v for k, v in MLP.items() if k != "init"}
VARIANTS.update(
    now_msam=dict(NOW, sam_rho=0.05, acc_steps=4, l2_reg=5e-3, p_label_noise=0.2),
    now_prev_batch=dict(NOW, sam_rho=0.05, sam_use_prev_batch=True, grad_gauss_std=0.01),
    now_weight_noise=dict(NOW, add_weight_perturb_scale=0.01, mul_weight_perturb_scale=0.1),
    now_lr_mult_l1=dict(NOW, sam_lr_mult=1.0, l1_reg=1e-4, sam_no_grad_norm=True, acc_steps=2),
    now_fp16=dict(NOW, sam_rho=0.05, acc_steps=2, half_prec=True),
    now_bn_every=dict(BN, init="original", sam_rho=0.05, acc_steps=2, sam_bn_update="every"),
)

# Run in float32: autocast does not apply to float64, so this variant's pin is its float16 run.
FLOAT32_VARIANTS = {"now_fp16"}

TIMING = ("seconds", "eval_seconds", "examples_per_s", "train_cpu_seconds")


def weights_digest(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the names and raw bytes of every tensor (exact, order-independent)."""
    h = hashlib.sha256()
    for k in sorted(state):
        t = state[k].detach().cpu().contiguous()
        h.update(k.encode())
        h.update(str(t.dtype).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def weights_fingerprint(state: dict[str, torch.Tensor]) -> list[float]:
    """[||w||, <w, r_1>, ..., <w, r_4>] over every floating tensor of ``state`` (float64, names
    sorted), r_i fixed unit Gaussian directions: a change of any weight moves a projection by
    about |change| / sqrt(numel), round-off moves them all by ~1e-16 ||w||."""
    ts = [state[k].detach().cpu().double().reshape(-1) for k in sorted(state)]
    w = torch.cat([t for t, k in zip(ts, sorted(state)) if state[k].is_floating_point()])
    r = torch.randn(4, w.numel(), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    r = r / r.norm(dim=1, keepdim=True)
    return [float(w.norm()), *map(float, r @ w)]


def run_variant(
    name: str, out: Path, dtype: torch.dtype = torch.float64, **overrides: Any
) -> dict[str, Any]:
    """Run one variant into ``out`` with torch's default float dtype ``dtype`` (the data, the
    model and every computation of the trainer follow it); return its metrics rows (timing
    fields dropped), the fingerprint of its final weights and buffers, the exact integer
    buffers, and the SHA-256 of the weights (exact, for same-machine comparisons only)."""
    from deep_nets.config import TrainConfig
    from deep_nets.train import train
    from suite.rundir import load_run

    torch.set_num_threads(1)
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        train(TrainConfig(**{**VARIANTS[name], **overrides}, out_dir=str(out)))
    finally:
        torch.set_default_dtype(old)
    # The row at epoch 0 (before any step) was added after the first pin: not part of it.
    rows = [
        {k: v for k, v in r.items() if k not in TIMING}
        for r in load_run(out)["metrics"]
        if r["epoch"] > 0
    ]
    ck = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)
    st = ck["model"]
    return {
        "rows": rows,
        "weights": weights_fingerprint(st),
        "int_buffers": {k: v.tolist() for k, v in sorted(st.items()) if not v.is_floating_point()},
        "scaler": ck.get("scaler"),
        "weights_sha256": weights_digest(st),
    }
