"""m-SAM step time: the loop, the vectorized path, and the original code's per-chunk loop.

Contenders, each on its own copy of the model, one full training step (both passes and the SGD
update) on a fixed generated batch:

- SGD (torch, momentum 0.9) and SAM (ours), the references of the ratios;
- m-SAM loop: ``msam_backward(..., vectorize=False)``, one chunk after the other;
- m-SAM auto: ``msam_backward(...)``, the default: the fused path (one forward of all chunks
  with per-chunk weights, one backward each way) where it applies, the loop elsewhere (ResNet);
- m-SAM vmap: ``msam_backward(..., vectorize="vmap")``, two ``vmap(grad)`` passes over chunks;
- original m-SAM: an independent re-implementation of the original code's per-chunk loop (for
  each chunk: gradient of L_chunk / acc_steps at w, w += rho g / ||g||, backward at w + e into
  p.grad, w -= e), plain torch.

Workloads: bench_core's (b) (the overhead-bound residual MLP, batch 32) at acc_steps 1, 2, 8, 32
(m = 32, 16, 4, 1) and (a) PreAct ResNet-18-GN width 16, batch 128, at acc_steps 8 (m = 16).
"Cold" is the first step of a contender in a fresh process (``python -m benchmarks.bench_msam
--cold``: nothing warm; no contender uses torch.compile; the import of torch is not counted),
"warm" the median over the measured rounds (round-robin in a random order each round, as
bench_core). Wall time and the process's CPU time are both given: on a shared machine the CPU
time is the less load-dependent figure.
"""

from __future__ import annotations

import copy
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as TF
from torch import Tensor, nn

from benchmarks.bench_core import (
    BASE,
    RHO,
    THREADS,
    _batch,
    _load,
    _quantiles,
    machine_description,
    mlp_workload,
    resnet_workload,
)
from sharpness import SAM, msam_backward

Step = Callable[[Tensor, Tensor], None]


def _loss(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    return TF.cross_entropy(model(x), y)


def sgd_step(model: nn.Module, acc: int) -> Step:
    opt = torch.optim.SGD(model.parameters(), **BASE)

    def step(x: Tensor, y: Tensor) -> None:
        opt.zero_grad()
        _loss(model, x, y).backward()
        opt.step()

    return step


def sam_step(model: nn.Module, acc: int) -> Step:
    opt = SAM(model.parameters(), torch.optim.SGD, rho=RHO, **BASE)

    def step(x: Tensor, y: Tensor) -> None:
        opt.zero_grad()
        _loss(model, x, y).backward()
        opt.first_step(zero_grad=True)
        _loss(model, x, y).backward()
        opt.second_step(zero_grad=True)

    return step


def msam(vectorize: bool | str | None) -> Callable[[nn.Module, int], Step]:
    def make(model: nn.Module, acc: int) -> Step:
        opt = SAM(model.parameters(), torch.optim.SGD, rho=RHO, **BASE)

        def step(x: Tensor, y: Tensor) -> None:
            opt.zero_grad()
            m = x.shape[0] // acc
            msam_backward(opt, model, lambda a, b: _loss(model, a, b), x, y, m, vectorize=vectorize)
            opt.update()

        return step

    return make


def original_step(model: nn.Module, acc: int) -> Step:
    """The original code's m-SAM loop, written from its description (not from our core)."""
    params = list(model.parameters())
    opt = torch.optim.SGD(params, **BASE)

    def step(x: Tensor, y: Tensor) -> None:
        opt.zero_grad()
        m = x.shape[0] // acc
        for c in range(acc):
            xc, yc = x[c * m : (c + 1) * m], y[c * m : (c + 1) * m]
            g = torch.autograd.grad(_loss(model, xc, yc) / acc, params)
            norm = torch.sqrt(sum((gi**2).sum() for gi in g)) + 1e-12
            e = [RHO * gi / norm for gi in g]
            with torch.no_grad():
                for p, ei in zip(params, e):
                    p.add_(ei)
            (_loss(model, xc, yc) / acc).backward()
            with torch.no_grad():
                for p, ei in zip(params, e):
                    p.sub_(ei)
        opt.step()

    return step


CONTENDERS = {
    "SGD": sgd_step,
    "SAM": sam_step,
    "m-SAM loop": msam(False),
    "m-SAM auto": msam(None),
    "m-SAM vmap": msam("vmap"),
    "original m-SAM": original_step,
}


WORKLOADS = {"a": resnet_workload, "b": mlp_workload}


def cold_in_fresh_process(key: str, contender: str, acc: int, device: str) -> tuple[float, float]:
    """Wall and CPU seconds of ``contender``'s first step in a new Python process."""
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.bench_msam",
        "--cold",
        key,
        contender,
        str(acc),
        device,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    wall, cpu = out.split()[-2:]
    return float(wall), float(cpu)


def _cold_main(key: str, contender: str, acc: int, device: str) -> None:
    torch.set_num_threads(THREADS)
    dev = torch.device(device)
    torch.manual_seed(0)
    w = WORKLOADS[key]()
    step = CONTENDERS[contender](w.build().to(dev), acc)
    x, y = _batch(w, dev)
    t0, c0 = time.perf_counter(), time.process_time()
    step(x, y)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    print(time.perf_counter() - t0, time.process_time() - c0)


def measure(w, acc: int, rounds: int, budget_s: float, device: str = "cpu") -> dict:
    """Cold and warm step times (wall and CPU ms) of every contender at ``acc`` chunks."""
    torch.set_num_threads(THREADS)
    dev = torch.device(device)
    torch.manual_seed(0)
    model = w.build().to(dev)
    x, y = _batch(w, dev)
    steps = {k: make(copy.deepcopy(model), acc) for k, make in CONTENDERS.items()}
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    def timed(fn: Step) -> tuple[float, float]:
        sync()
        t0, c0 = time.perf_counter(), time.process_time()
        fn(x, y)
        sync()
        return time.perf_counter() - t0, time.process_time() - c0

    cold = {k: cold_in_fresh_process(w.key, k, acc, device) for k in steps}
    for s in steps.values():  # two warm-up steps each
        s(x, y)
    for s in steps.values():  # one more warm-up step each
        s(x, y)
    wall: dict[str, list[float]] = {k: [] for k in steps}
    cpu: dict[str, list[float]] = {k: [] for k in steps}
    rng, t_start, r = random.Random(0), time.perf_counter(), 0
    load0 = os.getloadavg()
    while r < rounds or (time.perf_counter() - t_start < budget_s and r < 10 * rounds):
        order = list(steps)
        rng.shuffle(order)
        for k in order:
            a, b = timed(steps[k])
            wall[k].append(a)
            cpu[k].append(b)
        r += 1
    return dict(cold=cold, wall=wall, cpu=cpu, rounds=r, load=(load0, os.getloadavg()))


def table(title: str, res: dict, acc: int) -> list[str]:
    med = {k: _quantiles(v)[1] for k, v in res["wall"].items()}
    cmed = {k: _quantiles(v)[1] for k, v in res["cpu"].items()}
    lines = [
        f"{title}, acc_steps {acc}; {res['rounds']} rounds; load average "
        f"{_load(res['load'][0])} before, {_load(res['load'][1])} after.",
        "",
        "| step | cold wall ms | cold CPU ms | warm wall ms (IQR) | warm CPU ms | x SGD (wall) | "
        "x SGD (CPU) | x SAM (CPU) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for k in res["wall"]:
        q1, q2, q3 = _quantiles(res["wall"][k])
        cw, cc = res["cold"][k]
        lines.append(
            f"| {k} | {cw * 1e3:.1f} | {cc * 1e3:.1f} | {q2 * 1e3:.2f} ({q1 * 1e3:.2f}-"
            f"{q3 * 1e3:.2f}) | {cmed[k] * 1e3:.2f} | {med[k] / med['SGD']:.2f} | "
            f"{cmed[k] / cmed['SGD']:.2f} | {cmed[k] / cmed['SAM']:.2f} |"
        )
    return lines + [""]


def main(quick: bool = False) -> str:
    t0 = time.perf_counter()
    out = [
        "## m-SAM: loop, auto (fused), vmap, the original's loop",
        "",
        f"Machine: {machine_description()}.",
        "",
    ]
    b = mlp_workload()
    for acc in (1, 2, 8, 32):
        print(f"m-SAM bench (b) acc_steps {acc}", flush=True)
        out += table("(b) residual MLP, batch 32", measure(b, acc, rounds=15, budget_s=20), acc)
    a = resnet_workload()
    print("m-SAM bench (a) acc_steps 8", flush=True)
    out += table("(a) PreAct ResNet-18-GN width 16, batch 128 (m = 16)", measure(a, 8, 4, 60), 8)
    out.append(f"Whole benchmark: {time.perf_counter() - t0:.0f} s.")
    return "\n".join(out)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--cold"]:
        _cold_main(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5])
    else:
        print(main())
