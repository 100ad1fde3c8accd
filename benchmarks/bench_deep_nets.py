"""Throughput of the deep-net trainer: the full pipeline vs a bare loop on the same model.

For SGD and SAM (m = batch) we measure training examples/s of

- *pipeline*: ``deep_nets.train.train`` on a Fashion-MNIST subset (data on the device, per-epoch
  permutation, on-device augmentation, per-step lr, non-finite checks, m-SAM through
  ``sharpness.modules.msam_backward``); its ``examples_per_s`` counts training time only, taken from
  the second epoch (the first warms up);
- *bare*: the same model on one batch held in memory, forward-backward + SGD step (SAM: forward-
  backward, ``SAM.first_step``, forward-backward at w + e, ``SAM.second_step``), nothing else.

overhead = 1 - pipeline / bare (target <= 10%). CPU: resnet_tiny_gn at Fashion-MNIST shapes
(1 x 28 x 28), batch 128. On a GPU (when CUDA is available) the same for ResNet-18 at CIFAR shapes
(3 x 32 x 32), with random images written in the CIFAR-10 python-batch format.
"""

from __future__ import annotations

import pickle
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from deep_nets.config import TrainConfig
from deep_nets.models import build_model
from deep_nets.train import train
from sharpness.optim import SAM
from suite.rundir import read_jsonl

FMNIST = Path("/usr/share/datasets/fashion-mnist")


def _bare(
    model_name: str,
    shape: tuple,
    width: int | None,
    bs: int,
    sam: bool,
    steps: int,
    device: torch.device,
) -> tuple[float, float]:
    torch.manual_seed(0)
    model = build_model(
        model_name, in_channels=shape[0], num_classes=10, width=width, input_shape=shape
    ).to(device)
    x = torch.randn(bs, *shape, device=device)
    y = torch.randint(0, 10, (bs,), device=device)
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.05 if sam else 0.0, lr=0.01, momentum=0.9)

    def step() -> None:
        F.cross_entropy(model(x), y).backward()
        if sam:
            opt.first_step(zero_grad=True)
            F.cross_entropy(model(x), y).backward()
            opt.second_step(zero_grad=True)
        else:
            opt.base_optimizer.step()
            opt.zero_grad()

    for _ in range(3):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * bs / (time.perf_counter() - t0), steps * bs / (time.process_time() - c0)


def _pipeline(cfg: TrainConfig) -> tuple[float, float]:
    """(examples/s, examples per CPU second) of the trainer's second epoch."""
    with tempfile.TemporaryDirectory() as d:
        cfg.out_dir = str(Path(d) / "run")
        summary = train(cfg)
        rows = [r for r in read_jsonl(Path(cfg.out_dir) / "metrics.jsonl") if r["epoch_end"]]
        n = summary["global_step"] // cfg.epochs * cfg.batch_size
        return float(rows[-1]["examples_per_s"]), n / rows[-1]["train_cpu_seconds"]


def _row(
    device: str,
    model: str,
    method: str,
    bare: tuple,
    pipe: tuple,
    k: int = 1,
    ratio: float | None = None,
) -> str:
    """bare/pipe = (wall examples/s, examples per CPU second); overhead = 1 - ``ratio`` (default:
    pipe[k] / bare[k])."""
    ratio = pipe[k] / bare[k] if ratio is None else ratio
    return (
        f"| {device} | {model} | {method} | {bare[1]:,.0f} | {pipe[1]:,.0f} | "
        f"{100 * (1 - ratio):+.1f}% | {bare[0]:,.0f} / {pipe[0]:,.0f} |"
    )


def _fake_cifar(root: Path, n_train: int, n_test: int) -> None:
    """Random images in the CIFAR-10 python-batch layout (throughput only)."""
    rng = np.random.default_rng(0)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        n = n_test if name == "test_batch" else n_train // 5
        d = {
            "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            "labels": rng.integers(0, 10, n).tolist(),
        }
        with open(folder / name, "wb") as f:
            pickle.dump(d, f)


def main(steps: int = 10, repeats: int = 5, threads: int = 1) -> str:
    """``threads`` CPU threads for both loops: on a shared machine one thread gives stable
    numbers (multi-threaded OpenMP kernels slow down several-fold when cores are contended)."""
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _main(steps, repeats, threads)
    finally:
        torch.set_num_threads(old_threads)


def _main(steps: int, repeats: int, threads: int) -> str:
    lines = [
        "## deep_nets: trainer pipeline vs bare loop (training examples/s)",
        "",
        "| device | model | method | bare loop (ex/CPU s) | pipeline (ex/CPU s) | overhead "
        "| wall ex/s bare / pipeline |",
        "|---|---|---|---|---|---|---|",
    ]
    bs = 128
    if FMNIST.exists():
        cpu = torch.device("cpu")
        n_train = (steps + 1) * bs  # steps per epoch, after the validation split
        base = dict(
            dataset="fashion_mnist",
            model="resnet_tiny_gn",
            batch_size=bs,
            epochs=2,
            frac_train=n_train / 54000,
            lr_max=0.01,
            lr_schedule="constant",
            l2_reg=0.0,
            n_eval=bs,
            n_eval_train=bs,
            n_sharpness=bs,
            device="cpu",
            workers=threads,
        )
        for method, sam in (("SGD", False), ("SAM", True)):
            bare, pipe, ratios = (0.0, 0.0), (0.0, 0.0), []
            for _ in range(repeats):  # interleaved pairs: the machine is shared
                b = _bare("resnet_tiny_gn", (1, 28, 28), None, bs, sam, steps, cpu)
                p = _pipeline(TrainConfig(**base, sam_rho=0.05 if sam else 0.0))
                bare = (max(bare[0], b[0]), max(bare[1], b[1]))
                pipe = (max(pipe[0], p[0]), max(pipe[1], p[1]))
                ratios.append(p[1] / b[1])
            line = _row(
                f"cpu ({threads} thread)",
                "resnet_tiny_gn 1x28x28",
                method,
                bare,
                pipe,
                ratio=float(np.median(ratios)),
            )
            print(line, flush=True)
            lines.append(line)
    else:
        lines.append("| cpu | - | - | - | - | - | skipped: Fashion-MNIST not installed |")
    if torch.cuda.is_available():
        gpu = torch.device("cuda")
        with tempfile.TemporaryDirectory() as d:
            _fake_cifar(Path(d), n_train=(3 * steps + 1) * bs * 10 // 9 + 10, n_test=bs)
            base = dict(
                dataset="cifar10",
                model="resnet18",
                batch_size=bs,
                epochs=2,
                data_dir=d,
                lr_max=0.01,
                lr_schedule="constant",
                l2_reg=0.0,
                n_eval=bs,
                n_eval_train=bs,
                n_sharpness=bs,
                device="cuda",
            )
            for method, sam in (("SGD", False), ("SAM", True)):
                bare = _bare("resnet18", (3, 32, 32), None, bs, sam, 3 * steps, gpu)
                pipe = _pipeline(TrainConfig(**base, sam_rho=0.05 if sam else 0.0))
                name = torch.cuda.get_device_name() + " (overhead: wall)"
                line = _row(name, "resnet18 3x32x32", method, bare, pipe, k=0)
                print(line, flush=True)
                lines.append(line)
    lines += [
        "",
        "bare loop: one batch in memory, forward-backward + step (SAM: two passes); pipeline: "
        "deep_nets/train.py's training steps of its second epoch (augmentation, indexing, lr, "
        "checks; evaluation excluded). Throughput per CPU second of this process (one thread: "
        "less sensitive to other processes on a shared machine; on a GPU it is the host time, "
        "read the wall column there): best of the repeats; overhead: median over interleaved "
        "(bare, pipeline) pairs of 1 - pipeline / bare.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(main())
