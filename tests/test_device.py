"""Device tests, run on a GPU by ``benchmarks/gpu_check.sh`` (``SHARPNESS_TEST_DEVICE=cuda``, the
default: skipped without CUDA) and on the CPU by ``tests/test_gpu_check.py`` (so they cannot rot):
AMP float16 with a GradScaler and bfloat16, vectorized m-SAM == loop, an interrupted and resumed
trainer run, torch.compile of a SAM step."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sharpness import SAM, msam_backward

DEVICE = os.environ.get("SHARPNESS_TEST_DEVICE", "cuda")
pytestmark = [
    pytest.mark.skipif(
        DEVICE.startswith("cuda") and not torch.cuda.is_available(), reason="needs a CUDA device"
    ),
    pytest.mark.usefixtures("one_thread"),
]


def net(kind: str = "conv") -> nn.Module:
    """conv: Conv2d + GroupNorm (m-SAM's vmap path); mlp: Linear layers (its fused path)."""
    torch.manual_seed(0)
    if kind == "mlp":
        layers = [nn.Flatten(), nn.Linear(3 * 8 * 8, 32), nn.Tanh(), nn.Linear(32, 10)]
        return nn.Sequential(*layers).to(DEVICE)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.GroupNorm(4, 8),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 8 * 8, 10),
    ).to(DEVICE)


def data(t: int = 0, n: int = 32):
    g = torch.Generator().manual_seed(t)
    x = torch.randn(n, 3, 8, 8, generator=g)
    return x.to(DEVICE), torch.randint(0, 10, (n,), generator=g).to(DEVICE)


def one_step(vectorize, rho=0.1, dtype=None, scaler=None, steps=1, kind="conv"):
    model = net(kind)
    opt = SAM(model.parameters(), torch.optim.SGD, rho=rho, lr=0.05, momentum=0.9)
    for t in range(steps):
        x, y = data(t)
        opt.zero_grad()

        def loss(a, b):
            lo = F.cross_entropy(model(a).float(), b)
            return scaler.scale(lo) if scaler is not None else lo

        with torch.autocast(torch.device(DEVICE).type, dtype=dtype, enabled=dtype is not None):
            msam_backward(opt, model, loss, x, y, 4, vectorize=vectorize)
        opt.update(scaler)
        if scaler is not None:
            scaler.update()
    return torch.cat([p.detach().float().reshape(-1) for p in model.parameters()])


def rel(a, b):
    return float((a - b).norm() / b.norm())


KINDS = pytest.mark.parametrize("kind", ["conv", "mlp"], ids=["vmap", "fused"])


@KINDS
def test_vectorized_equals_loop_float32(kind):
    a, b = one_step(True, steps=5, kind=kind), one_step(False, steps=5, kind=kind)
    assert rel(a, b) < 1e-5


@KINDS
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_amp_vectorized_equals_loop_and_is_not_erm(dtype, kind):
    """Half precision (float16 with a GradScaler): both paths move the weights as SAM does (the
    autocast cache must not hand the pass at w + e the weights at w), the same within rounding."""

    def scaler():
        # init scale 2^8: the default 2^16 overflows this model's first steps (skipped steps)
        dev = torch.device(DEVICE).type
        return torch.amp.GradScaler(dev, init_scale=2.0**8) if dtype == torch.float16 else None

    w0 = torch.cat([p.detach().float().reshape(-1) for p in net(kind).parameters()])
    loop, vec = (
        one_step(False, dtype=dtype, scaler=scaler(), kind=kind),
        one_step(True, dtype=dtype, scaler=scaler(), kind=kind),
    )
    erm = one_step(True, rho=0.0, dtype=dtype, scaler=scaler(), kind=kind)
    sam32 = one_step(False, kind=kind)
    assert rel(loop, w0) > 1e-4 and rel(vec, w0) > 1e-4  # the steps were taken
    assert rel(vec, loop) < 0.1 * rel(erm, loop) + 1e-6
    assert rel(sam32 - w0, loop - w0) < 0.1  # SAM in half precision moves as float32 SAM


def test_resume_on_the_device(tmp_path):
    from deep_nets.config import TIMING_FIELDS, TrainConfig
    from deep_nets.train import train
    from suite.rundir import load_run

    kw = dict(
        dataset="mnist1d",
        model="mlp",
        model_width=16,
        epochs=2,
        batch_size=32,
        frac_train=0.1,
        workers=1,
        n_eval_train=128,
        n_eval=128,
        n_sharpness=32,
        sam_rho=0.05,
        acc_steps=4,
        device=DEVICE,
    )
    train(TrainConfig(out_dir=str(tmp_path / "full"), **kw))
    train(TrainConfig(out_dir=str(tmp_path / "part"), stop_after_epoch=1, **kw))
    train(TrainConfig(out_dir=str(tmp_path / "part"), resume=True, **kw))

    def rows(d):
        return [
            {k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in load_run(d)["metrics"]
        ]

    assert rows(tmp_path / "full") == rows(tmp_path / "part")


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated")
def test_torch_compile_of_a_sam_step():
    """A compiled model in an m-SAM step (msam_backward takes the loop for compiled models) gives
    the eager step's weights."""
    backend = "inductor" if DEVICE.startswith("cuda") else "aot_eager"
    out = []
    for compiled in (False, True):
        model = net()
        run = torch.compile(model, backend=backend) if compiled else model
        opt = SAM(model.parameters(), torch.optim.SGD, rho=0.1, lr=0.05)
        x, y = data()
        opt.zero_grad()
        msam_backward(opt, run, lambda a, b, r=run: F.cross_entropy(r(a), b), x, y, 8)
        opt.update()
        out.append(torch.cat([p.detach().reshape(-1) for p in model.parameters()]))
    assert rel(out[1], out[0]) < 1e-5
