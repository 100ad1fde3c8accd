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


# ------------------------------------------------------------------------------------ LookSAM
LK, LSTEPS, ALPHA = 2, 6, 0.7
LOOKSAM_MODES = ("readme", "deep_nets_step", "guarded")


def _looksam_worker(rank: int, init_file: str, out_prefix: str) -> None:
    """Each worker trains LookSAM(k=2) on its own shard with the three loops a user may write:
    the README's (``local_grads`` around every first backward), ``deep_nets.steps.looksam_step``
    (the suite's trainer step), and local only on ascent steps (the old trainer step)."""
    import contextlib

    from deep_nets.steps import StepContext, looksam_step
    from sharpness import LookSAM

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        torch.set_num_threads(1)
        out = {}
        for mode in LOOKSAM_MODES:
            model = nn.parallel.DistributedDataParallel(tiny_model())
            opt = LookSAM(model.parameters(), torch.optim.SGD, rho=RHO, k=LK, alpha=ALPHA, lr=LR)
            ctx = StepContext(
                cfg=None,
                opt=opt,
                net=model,
                loss=lambda a, b, m=model: loss_fn(m, a, b),
                m=N,
                params=list(model.parameters()),
                noise_gen=torch.Generator(),
                other_batch=None,
                autocast=contextlib.nullcontext,
            )
            shard = N // WORLD
            for t in range(LSTEPS):
                x, y = tiny_data(N, seed=100 + t)
                x, y = x[rank * shard : (rank + 1) * shard], y[rank * shard : (rank + 1) * shard]
                opt.zero_grad()
                if mode == "deep_nets_step":
                    looksam_step(ctx, x, y)
                    continue
                local = mode == "readme" or opt.ascent_due
                with local_grads(model) if local else contextlib.nullcontext():
                    loss_fn(model, x, y).backward()
                if opt.first_step(zero_grad=True):
                    loss_fn(model, x, y).backward()
                opt.second_step(zero_grad=True)
            out[mode] = [p.detach().clone() for p in model.module.parameters()]
        torch.save(out, f"{out_prefix}{rank}.pt")
    finally:
        dist.destroy_process_group()


def _looksam_by_hand() -> list[torch.Tensor]:
    """Per-worker LookSAM, written out in one process: on ascent steps each worker r perturbs
    with its own g_r, g_s is the mean of the workers' gradients at their w + e_r, and worker r
    keeps g_v,r = g_s - <g_r, g_s>/(||g_r|| + eps)^2 g_r; on the other steps the update is the
    mean over r of g_r + alpha ||g_r||/(||g_v,r|| + eps) g_v,r."""
    eps = 1e-12
    model = tiny_model()
    ps = list(model.parameters())
    flat = lambda xs: torch.cat([x.reshape(-1) for x in xs])  # noqa: E731
    gv = [None] * WORLD
    shard = N // WORLD
    for t in range(LSTEPS):
        x, y = tiny_data(N, seed=100 + t)
        parts = [(x[r * shard : (r + 1) * shard], y[r * shard : (r + 1) * shard]) for r in range(2)]
        gs_r = [torch.autograd.grad(loss_fn(model, a, b), ps) for a, b in parts]
        if t % LK == 0:
            w0 = params_of(model)
            at_e = []
            for (a, b), g in zip(parts, gs_r):
                norm = flat(g).norm()
                with torch.no_grad():
                    for p, w, gi in zip(ps, w0, g):
                        p.copy_(w + RHO * gi / (norm + eps))
                at_e.append(torch.autograd.grad(loss_fn(model, a, b), ps))
                with torch.no_grad():
                    for p, w in zip(ps, w0):
                        p.copy_(w)
            upd = [(u + v) / WORLD for u, v in zip(*at_e)]
            for r, g in enumerate(gs_r):
                fg, fs = flat(g), flat(upd)
                c = fg.dot(fs) / (fg.norm() + eps) ** 2
                gv[r] = [s - c * gi for s, gi in zip(upd, g)]
        else:
            each = []
            for r, g in enumerate(gs_r):
                c = ALPHA * flat(g).norm() / (flat(gv[r]).norm() + eps)
                each.append([gi + c * vi for gi, vi in zip(g, gv[r])])
            upd = [(u + v) / WORLD for u, v in zip(*each)]
        with torch.no_grad():
            for p, u in zip(ps, upd):
                p.sub_(LR * u)
    return params_of(model)


def test_ddp_looksam_replicas_stay_bitwise_equal_and_average_per_worker_looksam(tmp_path):
    """Issue 21: on reuse steps each worker used to add its own g_v, so the replicas drifted
    apart (4.8e-2 with the README loop, 1.2e-2 with the trainer's step, after 6 steps)."""
    prefix = str(tmp_path / "looksam_rank")
    mp.start_processes(
        _looksam_worker,
        args=(str(tmp_path / "init_looksam"), prefix),
        nprocs=WORLD,
        start_method="spawn",
    )
    ranks = [torch.load(f"{prefix}{r}.pt", weights_only=True) for r in range(WORLD)]
    for mode in LOOKSAM_MODES:
        diff = max((a - b).abs().max().item() for a, b in zip(ranks[0][mode], ranks[1][mode]))
        print(f"LookSAM DDP {mode}: max |w_rank0 - w_rank1| = {diff}")
        assert all(torch.equal(a, b) for a, b in zip(ranks[0][mode], ranks[1][mode])), mode
    want = _looksam_by_hand()
    for mode in ("readme", "deep_nets_step"):
        for a, b in zip(ranks[0][mode], want):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
