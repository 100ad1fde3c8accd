"""DistributedDataParallel: two real gloo processes on CPU, per-worker perturbations.

The update must equal, computed by hand in one process, the average over workers (and chunks) of
the SAM gradient each worker gets from its own shard: the paper's per-accelerator m-sharpness.
"""

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from sharpness import SAM, local_grads, msam_backward
from tests.core_utils import loss_fn, params_of, tiny_data, tiny_model

WORLD, N, RHO, LR, STEPS = 2, 16, 0.1, 0.1, 2


def _worker(rank: int, init_file: str, out_file: str, mode: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        torch.set_num_threads(1)
        model = nn.parallel.DistributedDataParallel(tiny_model())
        opt = SAM(model.parameters(), torch.optim.SGD, rho=RHO, lr=LR)
        shard = N // WORLD
        for t in range(STEPS):
            x, y = tiny_data(N, seed=100 + t)
            x, y = x[rank * shard : (rank + 1) * shard], y[rank * shard : (rank + 1) * shard]
            opt.zero_grad()
            if mode == "two_step":
                with local_grads(model):
                    loss_fn(model, x, y).backward()
                opt.first_step(zero_grad=True)
                loss_fn(model, x, y).backward()
                opt.second_step(zero_grad=True)
            else:
                msam_backward(opt, model, lambda a, b: loss_fn(model, a, b), x, y, shard // 2)
                opt.update()
        if rank == 0:
            torch.save(model.module.state_dict(), out_file)
    finally:
        dist.destroy_process_group()


def _by_hand(chunk: int) -> list[torch.Tensor]:
    model = tiny_model()
    ps = list(model.parameters())
    for t in range(STEPS):
        x, y = tiny_data(N, seed=100 + t)
        w0 = params_of(model)
        acc = [torch.zeros_like(p) for p in ps]
        for c in range(N // chunk):
            xc, yc = x[c * chunk : (c + 1) * chunk], y[c * chunk : (c + 1) * chunk]
            g = torch.autograd.grad(loss_fn(model, xc, yc), ps)
            norm = torch.sqrt(sum((gi**2).sum() for gi in g))
            with torch.no_grad():
                for p, w, gi in zip(ps, w0, g):
                    p.copy_(w + RHO * gi / (norm + 1e-12))
            gs = torch.autograd.grad(loss_fn(model, xc, yc), ps)
            acc = [a + b / (N // chunk) for a, b in zip(acc, gs)]
            with torch.no_grad():
                for p, w in zip(ps, w0):
                    p.copy_(w)
        with torch.no_grad():
            for p, a in zip(ps, acc):
                p.sub_(LR * a)
    return params_of(model)


def _run(tmp_path, mode: str) -> list[torch.Tensor]:
    init_file, out_file = str(tmp_path / f"init_{mode}"), str(tmp_path / f"out_{mode}.pt")
    mp.start_processes(
        _worker, args=(init_file, out_file, mode), nprocs=WORLD, start_method="spawn"
    )
    sd = torch.load(out_file, weights_only=True)
    return list(sd.values())


def test_ddp_two_step_perturbs_per_worker(tmp_path):
    got = _run(tmp_path, "two_step")
    want = _by_hand(chunk=N // WORLD)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    # and it is not plain (global) SAM, which perturbs with the whole batch's gradient
    glob = _by_hand(chunk=N)
    assert not all(torch.allclose(a, b, rtol=1e-9, atol=0) for a, b in zip(got, glob))


def test_ddp_msam_averages_every_chunk_of_every_worker(tmp_path):
    got = _run(tmp_path, "msam")
    want = _by_hand(chunk=N // WORLD // 2)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
