"""The GPU check (``benchmarks/gpu_check.sh``, ``make gpu-check``): one command, <= 8 minutes on
one GPU, that

1. runs the device tests (``tests/test_device.py`` on the device: AMP float16 with a GradScaler
   and bfloat16, vectorized m-SAM == loop, an interrupted + resumed trainer run, torch.compile of
   a SAM step);
2. times, on CIFAR-shaped generated data, ResNet-18 (the paper's model, batch 128) steps of SGD,
   SAM, LookSAM and m-SAM (loop and vectorized, acc_steps 1 / 8 / 32), and one trainer epoch
   (``deep_nets/train.py`` on generated CIFAR-10 python batches, evaluation included);
3. prints a table of GPU-hours for each paper-profile experiment, from those timings and the run
   lists of ``analysis.deep_nets`` (``EXPERIMENTS[...].runs.specs(PROFILES["paper"])``: every run's
   epochs, step kind and acc_steps; nothing hard-coded here).

``--device cpu --tiny`` runs the same code end to end at tiny sizes (a test runs it, so the script
cannot rot); its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import copy
import os
import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as TF

from deep_nets.models import build_model
from sharpness import SAM, LookSAM, msam_backward

ROOT = Path(__file__).resolve().parent.parent
# train / test examples of CIFAR-10 and -100 (the trainer holds 5000 of train out for validation)
CIFAR_TRAIN, CIFAR_VAL, CIFAR_TEST = 50_000, 5_000, 10_000


def sizes(tiny: bool) -> dict:
    if tiny:
        return dict(width=2, batch=64, hw=8, accs=(1, 8, 32), steps=1, warmup=1, epoch_n=256)
    return dict(
        width=64, batch=128, hw=32, accs=(1, 8, 32), steps=20, warmup=2, epoch_n=CIFAR_TRAIN
    )


def run_device_tests(device: str) -> int:
    env = dict(os.environ, SHARPNESS_TEST_DEVICE=device, PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", str(ROOT / "tests" / "test_device.py")]
    print("$", " ".join(cmd), f"(SHARPNESS_TEST_DEVICE={device})", flush=True)
    return subprocess.call(cmd, env=env, cwd=ROOT)


def _loss(model, x, y):
    return TF.cross_entropy(model(x), y)


def step_fns(model, kind: str, acc: int):
    """One training step of ``kind`` (sgd, sam, looksam, msam_loop, msam_vectorized)."""
    base = dict(lr=0.1, momentum=0.9, weight_decay=5e-4)
    if kind == "sgd":
        opt = torch.optim.SGD(model.parameters(), **base)

        def step(x, y):
            opt.zero_grad()
            _loss(model, x, y).backward()
            opt.step()

    elif kind == "looksam":
        opt = LookSAM(model.parameters(), torch.optim.SGD, rho=0.05, k=5, alpha=0.7, **base)

        def step(x, y):
            opt.zero_grad()
            _loss(model, x, y).backward()
            if opt.first_step(zero_grad=True):
                _loss(model, x, y).backward()
            opt.second_step(zero_grad=True)

    else:
        opt = SAM(model.parameters(), torch.optim.SGD, rho=0.05, **base)
        vec = {"sam": False, "msam_loop": False, "msam_vectorized": True}[kind]

        def step(x, y):
            opt.zero_grad()
            m = x.shape[0] // acc
            msam_backward(opt, model, lambda a, b: _loss(model, a, b), x, y, m, vectorize=vec)
            opt.update()

    return step


def time_steps(device: str, tiny: bool) -> dict[tuple[str, int], float]:
    """Seconds per step (median of ``steps`` after 2 warm-up steps) by (kind, acc_steps)."""
    s = sizes(tiny)
    dev = torch.device(device)
    if dev.type == "cpu":  # small tensors: more intra-op threads only spin on a shared CPU
        torch.set_num_threads(1)
    torch.manual_seed(0)
    model = build_model(
        "resnet18",
        in_channels=3,
        num_classes=10,
        width=s["width"],
        input_shape=(3, s["hw"], s["hw"]),
    ).to(dev)
    if dev.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(s["batch"], 3, s["hw"], s["hw"], generator=g).to(dev)
    y = torch.randint(0, 10, (s["batch"],), generator=g).to(dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    runs = [("sgd", 1), ("sam", 1), ("looksam", 1)]
    runs += [(k, a) for a in s["accs"] if a > 1 for k in ("msam_loop", "msam_vectorized")]
    out = {}
    for kind, acc in runs:
        step = step_fns(copy.deepcopy(model), kind, acc)
        for _ in range(s["warmup"]):
            step(x, y)
        ts = []
        for _ in range(s["steps"]):
            sync()
            t0 = time.perf_counter()
            step(x, y)
            sync()
            ts.append(time.perf_counter() - t0)
        out[(kind, acc)] = float(np.median(ts))
        print(f"  {kind:16s} acc_steps {acc:3d}: {out[(kind, acc)] * 1e3:9.2f} ms/step", flush=True)
    out[("msam_vectorized", 1)] = out[("msam_loop", 1)] = out[("sam", 1)]  # one chunk: SAM
    return out


def write_fake_cifar10(root: Path, n_train: int, n_test: int) -> None:
    """CIFAR-10 python batches of random images (the release's format)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    per = n_train // 5
    for i, name in enumerate([f"data_batch_{j}" for j in range(1, 6)] + ["test_batch"]):
        n = per if i < 5 else n_test
        d = {
            b"batch_label": name.encode(),
            b"labels": [int(v) for v in rng.integers(0, 10, n)],
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"filenames": [b"img_%05d.png" % k for k in range(n)],
        }
        (folder / name).write_bytes(pickle.dumps(d, protocol=2))


def time_trainer_epoch(device: str, tiny: bool) -> tuple[float, float]:
    """(seconds of one trainer epoch, its training seconds without evaluation), on generated
    CIFAR-10 batches with the paper's ResNet-18 setup (m-SAM, acc_steps 8, vectorized)."""
    from deep_nets.config import TrainConfig
    from deep_nets.train import train
    from suite.rundir import load_run

    s = sizes(tiny)
    with tempfile.TemporaryDirectory() as tmp:
        write_fake_cifar10(Path(tmp) / "data", s["epoch_n"], min(s["epoch_n"], CIFAR_TEST))
        cfg = TrainConfig(
            dataset="cifar10",
            data_dir=str(Path(tmp) / "data"),
            model="resnet18",
            model_width=s["width"],
            batch_size=s["batch"],
            epochs=1,
            sam_rho=0.05,
            acc_steps=8,
            device=device,
            out_dir=str(Path(tmp) / "run"),
            workers=1 if tiny else 0,
            n_eval=200 if tiny else 10_000,
            n_eval_train=200 if tiny else 10_000,
            n_sharpness=32 if tiny else 1024,
            sharpness_m=32 if tiny else 128,
        )
        t0 = time.perf_counter()
        train(cfg)
        wall = time.perf_counter() - t0
        rows = load_run(Path(tmp) / "run")["metrics"]
        train_s = float(rows[-1].get("seconds", wall)) - float(rows[-1].get("eval_seconds", 0.0))
    print(f"  trainer epoch: {wall:.1f} s wall ({train_s:.1f} s training)", flush=True)
    return wall, train_s


def step_key(flags: dict) -> tuple[str, int]:
    """Which timed step a run's flags use: (kind, acc_steps)."""
    if not flags.get("sam_rho", 0) and not flags.get("sam_lr_mult", 0):
        return "sgd", 1
    if flags.get("sam_variant") == "looksam":
        return "looksam", 1
    return "msam_vectorized", int(flags.get("acc_steps", 1))


def gpu_hours_table(times: dict, epoch: tuple[float, float], tiny: bool) -> list[str]:
    """GPU-hours per paper-profile experiment: every run's epochs x steps per epoch x its step's
    time, plus per epoch the trainer's non-step time (evaluation, data) measured in one epoch.
    acc_steps not timed are interpolated linearly in acc_steps between the timed ones."""
    from analysis.deep_nets.experiments import EXPERIMENTS
    from analysis.deep_nets.profiles import PROFILES
    from deep_nets.config import TrainConfig

    s = sizes(tiny)
    P = PROFILES["paper"]
    defaults = TrainConfig().to_dict()
    sgd_step = times[("sgd", 1)]
    steps_epoch_measured = (s["epoch_n"] - (s["epoch_n"] // 10 if tiny else CIFAR_VAL)) // s[
        "batch"
    ]
    overhead = max(epoch[0] - steps_epoch_measured * times[("msam_vectorized", 8)], 0.0)

    def step_time(kind: str, acc: int) -> float:
        if (kind, acc) in times:
            return times[(kind, acc)]
        accs = sorted(a for k, a in times if k == kind)
        lo = max([a for a in accs if a <= acc], default=accs[0])
        hi = min([a for a in accs if a >= acc], default=accs[-1])
        if lo == hi:
            return times[(kind, lo)]
        f = (acc - lo) / (hi - lo)
        return (1 - f) * times[(kind, lo)] + f * times[(kind, hi)]

    lines = [
        "| experiment | runs | epochs (all runs) | GPU-hours | x all-SGD |",
        "|---|---|---|---|---|",
    ]
    total = 0.0
    for name in ("fig1", "finetune", "noisy", "m_sharpness", "looksam"):
        specs = EXPERIMENTS[name].runs.specs(P)
        hours, sgd_hours, epochs = 0.0, 0.0, 0
        for sp in specs:
            flags = {**defaults, **sp.as_dict}
            ep = int(flags.get("epochs", 200))
            bs = int(flags.get("batch_size", 128)) * (s["batch"] / 128 if tiny else 1)
            n_train = (CIFAR_TRAIN - CIFAR_VAL) * float(flags.get("frac_train", 1.0))
            per_epoch = max(int(n_train // bs), 1)
            # SAM epochs only in the run's SAM window (Fig. 9 switches): ERM before/after
            lo, hi = (
                float(flags.get("sam_epoch_frac_start", 0)),
                float(flags.get("sam_epoch_frac_end", 1)),
            )
            sam_ep = sum(1 for e in range(1, ep + 1) if lo <= e / ep <= hi)
            kind, acc = step_key(flags)
            t_sam = step_time(kind, acc)
            sec = per_epoch * (sam_ep * t_sam + (ep - sam_ep) * sgd_step) + ep * overhead
            hours += sec / 3600
            sgd_hours += (per_epoch * ep * sgd_step + ep * overhead) / 3600
            epochs += ep
        total += hours
        lines.append(
            f"| {name} | {len(specs)} | {epochs} | {hours:.1f} | {hours / sgd_hours:.2f} |"
        )
    lines.append(f"| all five | | | {total:.1f} | |")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu (with --tiny: a test)")
    ap.add_argument("--tiny", action="store_true", help="tiny sizes (checks the script only)")
    ap.add_argument("--skip_tests", action="store_true", help="timings and table only")
    args = ap.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; use --device cpu --tiny to check the script")
        return 2
    t0 = time.perf_counter()
    if not args.skip_tests and run_device_tests(args.device) != 0:
        print("gpu_check: the device tests failed")
        return 1
    print(f"timing ResNet-18 steps on {args.device}", flush=True)
    times = time_steps(args.device, args.tiny)
    epoch = time_trainer_epoch(args.device, args.tiny)
    table = gpu_hours_table(times, epoch, args.tiny)
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(f"\nGPU-hours per paper-profile experiment ({name}; tiny={args.tiny}):\n")
    print("\n".join(table))
    print(f"\ngpu_check: done in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
