"""Measure a trained deep net: m-sharpness, Hessian spectrum, loss landscape, interpolation.

    python -m deep_nets.eval_sharpness --model_path RUN_DIR/checkpoint.pt --measure hessian
    python -m deep_nets.eval_sharpness --model_path RUN_DIR --measure msharpness --m 16 128 \\
        --rho 0.05 0.1 --kind worst --steps 20
    python -m deep_nets.eval_sharpness --model_path RUN_DIR --measure landscape --dim 2
    python -m deep_nets.eval_sharpness --model_path ERM_RUN --measure interpolate \\
        --other_path ERM_TO_SAM_RUN/checkpoint.pt --recompute_bn

The original's script name. The model and data come from the run directory's ``config.json``
(the checkpoint's directory); the checkpoint's ``"model"`` entry (or a plain state dict) is loaded
with ``torch.load(weights_only=True)``. Results go to ``RUN_DIR/measures/<name>/`` (``--name``,
default the measure): ``result.json`` (settings, checkpoint hash, numbers) and ``result.csv``
(one row per m/rho, grid point or t; for ``hessian`` the smoothed density on a grid), written
atomically; an existing result is kept unless ``--overwrite``.

The loss measured is the mean cross-entropy of the chosen split (``--split``, the training labels
as trained on, noisy ones included), without the trainer's L2 term, in eval mode (batch norm with
running statistics). All definitions are in ``sharpness.measures``.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sharpness import measures as M
from suite.cli import finite_float, progress, select_device
from suite.rundir import (
    atomic_write_json,
    atomic_write_text,
    file_sha256,
    load_error_reason,
    read_json,
)

MEASURES = ("msharpness", "hessian", "landscape", "interpolate")
SPLITS = ("train", "val", "test")
CHECKPOINT_NAMES = ("checkpoint.pt", "best.pt")


# ------------------------------------------------------------------ the coupling to the trainer
@dataclass
class LoadedRun:
    run_dir: Path
    checkpoint: Path
    config: dict[str, Any]
    model: nn.Module
    splits: Any  # deep_nets.data.Splits


def resolve_checkpoint(path: str, flag: str = "--model_path") -> Path:
    """A checkpoint file, or a run directory holding checkpoint.pt (or best.pt)."""
    p = Path(path)
    if p.is_dir():
        for name in CHECKPOINT_NAMES:
            if (p / name).is_file():
                return p / name
        raise ValueError(f"{flag} {path}: a directory without {' or '.join(CHECKPOINT_NAMES)}")
    if not p.is_file():
        raise ValueError(f"{flag} {path}: no such file or directory")
    return p


def load_state_dict(path: Path, flag: str = "--model_path") -> dict[str, Tensor]:
    """The "model" entry of one of our checkpoints, or a plain state dict (DDP prefixes removed);
    never unpickles anything but tensors."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # any unpickling error: say which flag and file (never torch's advice)
        raise ValueError(
            f"{flag} {path}: not a loadable checkpoint ({load_error_reason(e)}); the file is "
            "refused (only tensors are loaded)"
        ) from None
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ValueError(f"{flag} {path}: expected a state dict of tensors")
    return {(k[7:] if k.startswith("module.") else k): v for k, v in obj.items()}


def run_config(run_dir: Path, flag: str = "--model_path") -> dict[str, Any]:
    cfg_path = run_dir / "config.json"
    if not cfg_path.is_file():
        raise ValueError(
            f"{flag}: {run_dir} is not a run directory of deep_nets/train.py (no config.json "
            "next to the checkpoint)"
        )
    cfg = read_json(cfg_path, want_dict=True).get("config")
    if not isinstance(cfg, dict) or "dataset" not in cfg or "model" not in cfg:
        raise ValueError(f"{flag}: {cfg_path} has no trainer config (keys dataset, model)")
    return cfg


def load_run(model_path: str, device: torch.device, data_dir: str | None = None) -> LoadedRun:
    """Model (with the checkpoint's weights) and data of a deep_nets run. The only place that
    knows the trainer's run format: config.json["config"] fields, deep_nets.data.load_dataset,
    deep_nets.models.build_model, the checkpoint's "model" state dict."""
    from deep_nets.data import load_dataset
    from deep_nets.models import build_model

    ckpt = resolve_checkpoint(model_path)
    cfg = run_config(ckpt.parent)
    splits = load_dataset(
        cfg["dataset"],
        data_dir if data_dir is not None else cfg.get("data_dir"),
        seed=int(cfg.get("seed", 0)),
        val_frac=0.1,
        frac_train=float(cfg.get("frac_train", 1.0)),
        p_label_noise=float(cfg.get("p_label_noise", 0.0)),
        noise_type=cfg.get("noise_type", "sym"),
        device=device,
    )
    model = build_model(
        cfg["model"],
        in_channels=splits.input_shape[0],
        num_classes=splits.num_classes,
        width=cfg.get("model_width"),
        input_shape=tuple(splits.input_shape),
    )
    try:
        model.load_state_dict(load_state_dict(ckpt))
    except RuntimeError as e:
        raise ValueError(f"--model_path {ckpt} does not match the run's model: {e}") from e
    return LoadedRun(ckpt.parent, ckpt, cfg, model.to(device).eval(), splits)


# ------------------------------------------------------------------------------------ measures
def _examples(run: LoadedRun, split: str, n: int, seed: int) -> tuple[Tensor, Tensor]:
    s = run.splits
    x, y = {
        "train": (s.train_x, s.train_y),
        "val": (s.val_x, s.val_y),
        "test": (s.test_x, s.test_y),
    }[split]
    if x.shape[0] == 0:
        raise ValueError(f"--split {split}: the run has no {split} examples")
    if n and n < x.shape[0]:  # a seeded subset, in a random order (chunks mix classes)
        idx = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))[:n]
        x, y = x[idx.to(x.device)], y[idx.to(y.device)]
    return x, y


def _batches(x: Tensor, y: Tensor, bs: int) -> list[tuple[Tensor, Tensor]]:
    return [(x[i : i + bs], y[i : i + bs]) for i in range(0, x.shape[0], bs)]


def measure_msharpness(run, x, y, args) -> tuple[dict, list[dict]]:
    rows = []
    combos = [(m, r) for m in args.m for r in args.rho]
    for m, rho in progress(combos, desc="m-sharpness"):
        if m > x.shape[0]:
            raise ValueError(f"--m {m} exceeds the {x.shape[0]} examples (--n_examples)")
        r = M.m_sharpness(
            run.model,
            F.cross_entropy,
            x,
            y,
            m=m,
            rho=rho,
            kind=args.kind,
            p=args.norm,
            adaptive=args.adaptive,
            eta=args.eta,
            steps=args.steps,
            step_size_mult=args.step_size_mult,
            restarts=args.restarts,
            n_directions=args.n_directions,
            seed=args.seed,
        )
        per_chunk = r.pop("per_chunk")
        r["sharpness_se"] = (
            float(np.std(per_chunk, ddof=1) / math.sqrt(len(per_chunk)))
            if len(per_chunk) > 1
            else None
        )
        rows.append(r)
    return {"rows": rows}, rows


def measure_hessian(run, x, y, args) -> tuple[dict, list[dict]]:
    data = (x, y) if x.shape[0] <= args.batch_size else _batches(x, y, args.batch_size)
    op = M.HessianOperator(
        run.model, F.cross_entropy, data, dtype=torch.float64 if args.float64 else None
    )
    steps = progress(total=3, desc="hessian")
    t0 = time.perf_counter()
    eig = M.top_eigenvalues(op, args.top_k, max_iter=args.max_iter, tol=args.tol, seed=args.seed)
    steps.update()
    ev = eig.eigenvalues
    res: dict[str, Any] = {
        "n_params": op.dim,
        "eigenvalues": ev,
        "lambda_max": ev[0],
        f"lambda_max_over_lambda_{len(ev)}": ev[0] / ev[-1] if ev[-1] != 0 else None,
        "eig_products": eig.n_products,
        "eig_converged": eig.converged,
    }
    if args.trace_samples:
        res["trace"], res["trace_se"] = M.hutchinson_trace(op, args.trace_samples, seed=args.seed)
    steps.update()
    rows: list[dict] = []
    if args.density_vectors:
        d = M.slq_density(
            op, n_vectors=args.density_vectors, steps=args.density_steps, seed=args.seed
        )
        res["density_nodes"], res["density_weights"] = d.nodes, d.weights
        lo = min(min(n) for n in d.nodes)
        hi = max(max(n) for n in d.nodes)
        sigma = args.density_sigma * max(hi - lo, 1e-12)
        grid = np.linspace(lo - 5 * sigma, hi + 5 * sigma, 1000)
        phi = d.smooth(grid, sigma)
        res["density_sigma"] = sigma
        rows = [{"eigenvalue": float(t), "density": float(p)} for t, p in zip(grid, phi)]
    steps.update()
    steps.close()
    res["seconds"] = time.perf_counter() - t0
    return res, rows


def _bn_data(run, args) -> list | None:
    if not args.recompute_bn:
        return None
    x, y = _examples(run, "train", args.n_bn, args.seed + 1)
    return _batches(x, y, args.batch_size)


def measure_landscape(run, x, y, args) -> tuple[dict, list[dict]]:
    data = _batches(x, y, args.batch_size)
    bn = _bn_data(run, args)
    d1 = M.filter_normalized_direction(run.model, args.seed)
    alphas = np.linspace(args.alpha_min, args.alpha_max, args.points).tolist()
    rows: list[dict] = []
    if args.dim == 1:
        for a in progress(alphas, desc="landscape 1-D"):
            rows += M.slice_1d(run.model, F.cross_entropy, data, d1, [a], bn_data=bn)
    else:
        d2 = M.filter_normalized_direction(run.model, args.seed + 10**6)
        for a in progress(alphas, desc="landscape 2-D"):
            rows += M.slice_2d(run.model, F.cross_entropy, data, d1, d2, [a], alphas, bn_data=bn)
    return {"dim": args.dim, "rows": rows}, rows


def measure_interpolate(run, x, y, args) -> tuple[dict, list[dict]]:
    if not args.other_path:
        raise ValueError("--measure interpolate needs --other_path (the second checkpoint)")
    other = resolve_checkpoint(args.other_path, "--other_path")
    if (other.parent / "config.json").is_file():
        oc = run_config(other.parent, "--other_path")
        for k in ("model", "model_width", "dataset"):
            if oc.get(k) != run.config.get(k):
                raise ValueError(
                    f"--other_path {other}: its run has --{k} {oc.get(k)!r}, this run "
                    f"{run.config.get(k)!r}; interpolation needs the same architecture and data"
                )
    sb = load_state_dict(other, "--other_path")
    sa = run.model.state_dict()
    data = _batches(x, y, args.batch_size)
    bn = _bn_data(run, args)
    ts = np.linspace(args.t_min, args.t_max, args.points).tolist()
    rows: list[dict] = []
    for t in progress(ts, desc="interpolate"):
        try:
            rows += M.interpolate(run.model, sa, sb, [t], F.cross_entropy, data, bn_data=bn)
        except ValueError as e:
            raise ValueError(f"--other_path {other}: {e}") from e
    return {"other_path": str(other), "other_sha256": file_sha256(other), "rows": rows}, rows


MEASURE_FNS = {
    "msharpness": measure_msharpness,
    "hessian": measure_hessian,
    "landscape": measure_landscape,
    "interpolate": measure_interpolate,
}


# ----------------------------------------------------------------------------------------- CLI
def _positive_int(name: str):
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name}: {text!r} is not an integer") from None
        if v < 1:
            raise argparse.ArgumentTypeError(f"{name}: must be >= 1, got {v}")
        return v

    return parse


def _norm(text: str) -> float:
    if text in ("inf", "linf", "Linf"):
        return math.inf
    if text == "2":
        return 2.0
    raise argparse.ArgumentTypeError(f"--norm: choose 2 or inf, got {text!r}")


def _name(text: str) -> str:
    """argparse ``type=`` for --name: one folder name, so the result stays in RUN_DIR/measures/."""
    if not text or text in (".", "..") or "/" in text or os.sep in text or "\0" in text:
        raise argparse.ArgumentTypeError(
            f"{text!r} must be a plain folder name (no '/', not '.' or '..'): the result goes to "
            "RUN_DIR/measures/<name>/"
        )
    return text


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m deep_nets.eval_sharpness",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    g = ap.add_argument_group("what and where")
    g.add_argument(
        "--model_path",
        type=str,
        required=True,
        help="RUN_DIR/checkpoint.pt (or best.pt), or RUN_DIR itself",
    )
    g.add_argument("--measure", type=str, required=True, choices=MEASURES)
    g.add_argument(
        "--name",
        type=_name,
        default=None,
        help="output folder RUN_DIR/measures/<name>/, a plain folder name (default: the measure)",
    )
    g.add_argument("--overwrite", action="store_true", help="replace an existing result")
    g.add_argument(
        "--split",
        type=str,
        default="train",
        choices=SPLITS,
        help="examples to measure on (default: train, the labels trained on)",
    )
    g.add_argument(
        "--n_examples",
        type=int,
        default=1024,
        help="a seeded random subset of the split; 0 = all (default: 1024)",
    )
    g.add_argument(
        "--batch_size",
        type=_positive_int("--batch_size"),
        default=1024,
        help="evaluation batch size (Hessian: one batch if the examples fit)",
    )
    g.add_argument("--seed", type=int, default=0, help="subset, directions, restarts (default 0)")
    g.add_argument("--device", type=str, default=None, help="cpu, cuda, cuda:N")
    g.add_argument("--data_dir", type=str, default=None, help="override the run's --data_dir")
    s = ap.add_argument_group("msharpness")
    s.add_argument("--kind", type=str, default="worst", choices=("worst", "average"))
    s.add_argument(
        "--m",
        type=_positive_int("--m"),
        nargs="+",
        default=[128],
        help="examples per perturbation, one or more (default 128)",
    )
    s.add_argument(
        "--rho",
        type=finite_float,
        nargs="+",
        default=[0.05],
        help="radius, one or more (default 0.05)",
    )
    s.add_argument("--norm", type=_norm, default=2.0, help="2 or inf (default 2)")
    s.add_argument("--adaptive", action="store_true", help="T = |w| + eta (adaptive sharpness)")
    s.add_argument("--eta", type=finite_float, default=0.0, help="adaptive eta (0)")
    s.add_argument("--steps", type=_positive_int("--steps"), default=20, help="ascent steps")
    s.add_argument(
        "--step_size_mult",
        type=finite_float,
        default=1.0,
        help="ascent step = rho * this (default 1.0, as the trainer's --sam_iters)",
    )
    s.add_argument("--restarts", type=int, default=0, help="extra random starts (default 0)")
    s.add_argument(
        "--n_directions",
        type=_positive_int("--n_directions"),
        default=10,
        help="random directions per chunk (average case)",
    )
    h = ap.add_argument_group("hessian")
    h.add_argument("--top_k", type=_positive_int("--top_k"), default=5)
    h.add_argument(
        "--max_iter",
        type=_positive_int("--max_iter"),
        default=100,
        help="Lanczos steps at most (default 100)",
    )
    h.add_argument(
        "--tol",
        type=finite_float,
        default=1e-4,
        help="relative residual tolerance of the top-k Ritz pairs (default 1e-4)",
    )
    h.add_argument("--trace_samples", type=int, default=0, help="Hutchinson vectors (0: off)")
    h.add_argument("--density_vectors", type=int, default=1, help="SLQ runs (0: off)")
    h.add_argument("--density_steps", type=_positive_int("--density_steps"), default=90)
    h.add_argument(
        "--density_sigma",
        type=finite_float,
        default=0.01,
        help="Gaussian width as a fraction of the spectrum's range",
    )
    h.add_argument("--float64", action="store_true", help="measure a float64 copy")
    lg = ap.add_argument_group("landscape / interpolate")
    lg.add_argument("--dim", type=int, default=1, choices=(1, 2))
    lg.add_argument("--alpha_min", type=finite_float, default=-1.0)
    lg.add_argument("--alpha_max", type=finite_float, default=1.0)
    lg.add_argument(
        "--points",
        type=_positive_int("--points"),
        default=21,
        help="grid points per axis (or t values)",
    )
    lg.add_argument("--other_path", type=str, default=None, help="interpolate: the second model")
    lg.add_argument("--t_min", type=finite_float, default=-0.5)
    lg.add_argument("--t_max", type=finite_float, default=1.5)
    lg.add_argument(
        "--recompute_bn",
        action="store_true",
        help="recompute batch-norm statistics at every point on training examples",
    )
    lg.add_argument(
        "--n_bn",
        type=_positive_int("--n_bn"),
        default=2048,
        help="training examples for --recompute_bn",
    )
    return ap


def _csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    if rows:
        w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if v is None else v) for k, v in r.items()})
    return buf.getvalue()


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.n_examples < 0:
        ap.error("--n_examples must be >= 0 (0 = the whole split)")
    if args.restarts < 0 or args.trace_samples < 0 or args.density_vectors < 0:
        ap.error("--restarts, --trace_samples and --density_vectors must be >= 0")
    if any(r < 0 for r in args.rho):
        ap.error("--rho must be >= 0")
    if args.measure == "interpolate" and not args.other_path:
        ap.error("--measure interpolate needs --other_path (the second checkpoint)")
    try:
        device = select_device(args.device)
        ckpt = resolve_checkpoint(args.model_path)
        out_dir = ckpt.parent / "measures" / (args.name or args.measure)
        if (out_dir / "result.json").exists() and not args.overwrite:
            ap.error(f"{out_dir}/result.json exists: pass --overwrite or choose another --name")
        run = load_run(args.model_path, device, args.data_dir)
        x, y = _examples(run, args.split, args.n_examples, args.seed)
        t0 = time.perf_counter()
        res, rows = MEASURE_FNS[args.measure](run, x, y, args)
    except ValueError as e:
        ap.error(str(e))
    out = {
        "measure": args.measure,
        "args": {
            k: (str(v) if isinstance(v, float) and math.isinf(v) else v)
            for k, v in vars(args).items()
        },
        "checkpoint": str(ckpt),
        "checkpoint_sha256": file_sha256(ckpt),
        "run_config": run.config,
        "n_examples": int(x.shape[0]),
        "device": str(device),
        "seconds": time.perf_counter() - t0,
        "result": res,
    }
    atomic_write_json(out_dir / "result.json", out)
    if rows:
        atomic_write_text(out_dir / "result.csv", _csv(rows))
    print(f"wrote {out_dir}/result.json" + (" and result.csv" if rows else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
