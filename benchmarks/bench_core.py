"""Core optimizers: step time and memory of SAM, LookSAM and m-SAM against SGD and the PyPI package
``pytorch-optimizer`` (its SAM and LookSAM, the library researchers would otherwise pick).

Every contender runs a *full training step* on its own copy of the same model and batch:
forward + backward(s) + optimizer, each used the way its documentation says:

- SGD: ``torch.optim.SGD(momentum=0.9)``; one forward-backward.
- SAM (ours): backward, ``first_step(zero_grad=True)``, backward at w + e, ``second_step``.
- LookSAM (ours, k=5): the second forward-backward only when ``first_step`` returns True.
- m-SAM (ours, m = batch/8): ``msam_backward`` (8 chunks; by default fused where it applies),
  then ``update()``.
- pytorch-optimizer SAM / LookSAM: ``closure(); optimizer.step(closure)`` as their docstrings
  show; their LookSAM calls the closure on every step (two passes every step).

Timing: the contenders run round-robin (a fresh random order every round) so that load changes
on a shared machine hit all of them alike; each round every contender runs ``block`` consecutive
steps, each step timed alone. A contender's samples are the per-round means, except LookSAM's:
its cost depends on the phase (one ascent step in k), so its samples are means over sliding
windows of k consecutive steps, each containing exactly one ascent. Tables give the median and
the interquartile range; ratios are ratios of medians, and "paired" ratios are the median of the
per-round (per-window) ratios of two contenders measured side by side.

Memory (CPU): the profiler's allocation records (``profile_memory=True``; the records
``export_memory_timeline`` is built from) give the running total of bytes allocated during one
full step; its peak plus the optimizer's persistent state (every tensor the optimizer object
holds between steps, parameters excluded) is the step's memory, and SAM's extra memory is that
minus SGD's. On CUDA, ``torch.cuda.max_memory_allocated`` over the step gives the same quantity.
"""

from __future__ import annotations

import copy
import math
import os
import platform
import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as TF
from torch import Tensor, nn
from torch.profiler import ProfilerActivity, profile, record_function

from sharpness import SAM, LookSAM
from sharpness.modules import msam_backward

K = 5  # LookSAM's period
RHO = 0.05
BASE = dict(lr=0.01, momentum=0.9, weight_decay=5e-4)  # SGD options shared by every contender
# Intra-op threads for every contender. 1 by default: on the shared 2-core reference machine,
# loaded by other jobs, 2 threads made a step 25x slower and its spread 100x wider (OpenMP
# threads waiting on a core held by another process); set SHARPNESS_BENCH_THREADS=2 on an idle
# machine.
THREADS = int(os.environ.get("SHARPNESS_BENCH_THREADS", "1"))
OPT_MARK = "bench::optimizer"  # record_function names delimiting optimizer calls in a profile
CLOSURE_MARK = "bench::closure"

StepFn = Callable[[Tensor, Tensor], None]


# ----------------------------------------------------------------------------------- workloads
class ResidualMLP(nn.Module):
    """x -> x + tanh(W_l x + b_l) for ``depth`` layers, then a linear head: 2 * depth + 2 small
    tensors, so per-tensor optimizer overhead dominates (tanh keeps activations bounded)."""

    def __init__(self, dim: int = 32, depth: int = 50, num_classes: int = 10) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(dim, dim) for _ in range(depth))
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x = x + torch.tanh(layer(x))
        return self.head(x)


@dataclass(frozen=True)
class Workload:
    """A model, a generated batch, and how to time it.

    ``block`` consecutive steps per contender per round; after ``warmup`` rounds the measured
    rounds go on until ``min_rounds`` are done and then while the next round fits in
    ``budget_s`` seconds (at most ``max_rounds``).
    """

    key: str
    title: str
    build: Callable[[], nn.Module]
    input_shape: tuple[int, ...]
    num_classes: int
    batch: int
    warmup: int
    min_rounds: int
    max_rounds: int
    block: int
    budget_s: float


def resnet_workload(
    batch: int = 128, width: int = 16, budget_s: float = 110.0, min_rounds: int = 6
) -> Workload:
    from deep_nets.models import build_model

    def build() -> nn.Module:
        return build_model(
            "resnet18_gn", in_channels=3, num_classes=10, width=width, input_shape=(3, 32, 32)
        )

    return Workload(
        key="a",
        title=f"(a) PreAct ResNet-18, GroupNorm, width {width}, batch {batch}, 32x32x3, 10 classes",
        build=build,
        input_shape=(3, 32, 32),
        num_classes=10,
        batch=batch,
        warmup=1,
        min_rounds=min_rounds,
        max_rounds=20,
        block=1,
        budget_s=budget_s,
    )


def mlp_workload(
    depth: int = 50, dim: int = 32, batch: int = 32, budget_s: float = 35.0, min_rounds: int = 15
) -> Workload:
    return Workload(
        key="b",
        title=(
            f"(b) overhead-bound: {depth} residual Linear({dim}, {dim}) + tanh layers and a "
            f"linear head ({2 * depth + 2} parameter tensors), batch {batch}"
        ),
        build=lambda: ResidualMLP(dim, depth, 10),
        input_shape=(dim,),
        num_classes=10,
        batch=batch,
        warmup=2,
        min_rounds=min_rounds,
        max_rounds=400,
        block=K,
        budget_s=budget_s,
    )


# ----------------------------------------------------------------------------------- contenders
class _Marks:
    """Brackets optimizer calls (and the peer's closure inside them) with record_function, only
    while profiling memory: the timing runs pay nothing for it."""

    def __init__(self) -> None:
        self.enabled = False

    def opt(self) -> Any:
        return record_function(OPT_MARK) if self.enabled else _NULL

    def closure(self) -> Any:
        return record_function(CLOSURE_MARK) if self.enabled else _NULL


class _Null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


_NULL = _Null()


@dataclass
class Contender:
    """One optimizer on one model: ``step(x, y)`` runs a full training step."""

    name: str
    passes: str  # forward-backward passes per step, as documented
    step: StepFn
    optimizer: torch.optim.Optimizer
    model: nn.Module
    marks: _Marks
    cycle: int = 1  # steps in one period of the cost (k for LookSAM)


def _loss(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    return TF.cross_entropy(model(x), y)


def make_sgd(model: nn.Module) -> Contender:
    opt = torch.optim.SGD(model.parameters(), **BASE)
    mk = _Marks()

    def step(x: Tensor, y: Tensor) -> None:
        opt.zero_grad()
        _loss(model, x, y).backward()
        with mk.opt():
            opt.step()

    return Contender("SGD (torch, momentum 0.9)", "1", step, opt, model, mk)


def make_sam(model: nn.Module) -> Contender:
    opt = SAM(model.parameters(), torch.optim.SGD, rho=RHO, **BASE)
    mk = _Marks()

    def step(x: Tensor, y: Tensor) -> None:
        opt.zero_grad()
        _loss(model, x, y).backward()
        with mk.opt():
            opt.first_step(zero_grad=True)
        _loss(model, x, y).backward()
        with mk.opt():
            opt.second_step(zero_grad=True)

    return Contender("SAM (ours)", "2", step, opt, model, mk)


def make_looksam(model: nn.Module) -> Contender:
    opt = LookSAM(model.parameters(), torch.optim.SGD, rho=RHO, k=K, alpha=0.7, **BASE)
    mk = _Marks()

    def step(x: Tensor, y: Tensor) -> None:
        opt.zero_grad()
        _loss(model, x, y).backward()
        with mk.opt():
            ascent = opt.first_step(zero_grad=True)
        if ascent:
            _loss(model, x, y).backward()
        with mk.opt():
            opt.second_step(zero_grad=True)

    return Contender(f"LookSAM (ours, k={K})", f"1 + 1/{K}", step, opt, model, mk, cycle=K)


def make_msam(model: nn.Module, m: int) -> Contender:
    opt = SAM(model.parameters(), torch.optim.SGD, rho=RHO, **BASE)
    mk = _Marks()

    def compute_loss(x: Tensor, y: Tensor) -> Tensor:
        return _loss(model, x, y)

    def step(x: Tensor, y: Tensor) -> None:
        opt.zero_grad()
        msam_backward(opt, model, compute_loss, x, y, m)
        with mk.opt():
            opt.update()
            opt.zero_grad()

    return Contender(f"m-SAM (ours, m={m})", "2 (on chunks)", step, opt, model, mk)


def _peer_step(opt: Any, model: nn.Module, mk: _Marks) -> StepFn:
    # The usage of pytorch-optimizer's docstring: zero_grad, closure(), step(closure).
    def step(x: Tensor, y: Tensor) -> None:
        def closure() -> Tensor:
            with mk.closure():
                opt.zero_grad()
                loss = _loss(model, x, y)
                loss.backward()
            return loss

        opt.zero_grad()
        closure()
        with mk.opt():
            opt.step(closure)

    return step


def make_peer_sam(model: nn.Module, foreach: bool | None = None) -> Contender:
    from pytorch_optimizer import SAM as PeerSAM

    opt = PeerSAM(model.parameters(), torch.optim.SGD, rho=RHO, foreach=foreach, **BASE)
    mk = _Marks()
    name = "pytorch-optimizer SAM" + ("" if foreach is None else f" (foreach={foreach})")
    return Contender(name, "2", _peer_step(opt, model, mk), opt, model, mk)


def make_peer_looksam(model: nn.Module) -> Contender:
    from pytorch_optimizer import LookSAM as PeerLookSAM

    opt = PeerLookSAM(model.parameters(), torch.optim.SGD, rho=RHO, k=K, alpha=0.7, **BASE)
    mk = _Marks()
    # Its step(closure) calls the closure on every step, so every step has two passes.
    return Contender(
        f"pytorch-optimizer LookSAM (k={K})", "2", _peer_step(opt, model, mk), opt, model, mk
    )


def make_contenders(
    model: nn.Module, batch: int, names: Sequence[str] | None = None
) -> list[Contender]:
    """Contenders by key (default all): sgd, sam, looksam, msam, peer_sam, peer_sam_foreach,
    peer_looksam; each gets its own deep copy of ``model``."""
    m = max(batch // 8, 1)
    makers: dict[str, Callable[[nn.Module], Contender]] = {
        "sgd": make_sgd,
        "sam": make_sam,
        "looksam": make_looksam,
        "msam": lambda mod: make_msam(mod, m),
        "peer_sam": make_peer_sam,
        "peer_sam_foreach": lambda mod: make_peer_sam(mod, foreach=True),
        "peer_looksam": make_peer_looksam,
    }
    keys = list(makers) if names is None else list(names)
    unknown = [k for k in keys if k not in makers]
    if unknown:
        raise ValueError(f"unknown contenders {unknown}; choose from {list(makers)}")
    return [makers[k](copy.deepcopy(model)) for k in keys]


# ----------------------------------------------------------------------------------- timing
def _batch(w: Workload, device: torch.device, seed: int = 0) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(w.batch, *w.input_shape, generator=g)
    y = torch.randint(0, w.num_classes, (w.batch,), generator=g)
    return x.to(device), y.to(device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _quantiles(xs: Sequence[float]) -> tuple[float, float, float]:
    """(q25, median, q75) with linear interpolation (a single sample gives it three times)."""
    if len(xs) == 1:
        return xs[0], xs[0], xs[0]
    q1, q2, q3 = statistics.quantiles(xs, n=4, method="inclusive")
    return q1, q2, q3


def _windows(series: Sequence[float], w: int) -> list[float]:
    """Means over sliding windows of w consecutive entries (the series itself for w = 1)."""
    if w <= 1 or len(series) < w:
        return list(series) if w <= 1 else [statistics.fmean(series)]
    return [statistics.fmean(series[i : i + w]) for i in range(len(series) - w + 1)]


@dataclass
class TimingResult:
    """Per-step times (seconds) of each contender, in execution order, and the workload."""

    workload: Workload
    device: str
    names: list[str]
    passes: dict[str, str]
    cycles: dict[str, int]
    step_s: dict[str, list[float]]  # every measured step, in order
    rounds: int
    wall_s: float
    loadavg_before: tuple[float, float, float]
    loadavg_after: tuple[float, float, float]
    loss_finite: dict[str, bool] = field(default_factory=dict)

    def window(self, name: str) -> int:
        """Rounds per sample: enough to hold whole cost periods (1 unless LookSAM with a block
        that is not a multiple of k)."""
        b, c = self.workload.block, self.cycles[name]
        return math.lcm(b, c) // b

    def samples(self, name: str, window: int | None = None) -> list[float]:
        """Per-round mean step times, as sliding means over ``window`` rounds (default
        ``self.window(name)``)."""
        b = self.workload.block
        s = self.step_s[name]
        per_round = [statistics.fmean(s[i : i + b]) for i in range(0, len(s), b)]
        return _windows(per_round, self.window(name) if window is None else window)

    def stats_ms(self, name: str) -> tuple[float, float, float]:
        return tuple(1e3 * v for v in _quantiles(self.samples(name)))  # type: ignore[return-value]

    def ratio(self, a: str, b: str) -> float:
        """Ratio of the medians of a and b."""
        return self.stats_ms(a)[1] / self.stats_ms(b)[1]

    def paired_ratio(self, a: str, b: str) -> tuple[float, float, float]:
        """(q25, median, q75) of per-round (per-window) ratios a/b, both over the same rounds."""
        w = max(self.window(a), self.window(b))
        ra, rb = self.samples(a, w), self.samples(b, w)
        return _quantiles([x / y for x, y in zip(ra, rb)])


def measure_times(
    w: Workload,
    contenders: Sequence[str] | None = None,
    device: str = "cpu",
    seed: int = 0,
    verbose: bool = True,
) -> TimingResult:
    """Time full training steps of every contender on workload ``w``, interleaved round-robin."""
    torch.set_num_threads(THREADS)
    dev = torch.device(device)
    torch.manual_seed(seed)
    model = w.build().to(dev)
    x, y = _batch(w, dev, seed)
    cs = make_contenders(model, w.batch, contenders)
    order_rng = random.Random(seed)
    step_s: dict[str, list[float]] = {c.name: [] for c in cs}
    load0 = os.getloadavg()
    t_start = time.perf_counter()
    t_measure = None
    r = 0
    total_rounds = 0
    while True:
        measuring = total_rounds >= w.warmup
        if measuring and t_measure is None:
            t_measure = time.perf_counter()
        if measuring:
            done = r >= w.min_rounds
            elapsed = time.perf_counter() - t_measure
            per_round = elapsed / max(r, 1)
            if r >= w.max_rounds or (done and elapsed + per_round > w.budget_s):
                break
        order = list(cs)
        order_rng.shuffle(order)
        for c in order:
            for _ in range(w.block):
                _sync(dev)
                t0 = time.perf_counter()
                c.step(x, y)
                _sync(dev)
                dt = time.perf_counter() - t0
                if measuring:
                    step_s[c.name].append(dt)
        total_rounds += 1
        if measuring:
            r += 1
        if verbose and (total_rounds == 1 or total_rounds % max(1, 10 // w.block) == 0):
            print(
                f"  [{w.key}/{device}] round {total_rounds}, {time.perf_counter() - t_start:.0f} s",
                flush=True,
            )
    finite = {}
    with torch.no_grad():
        for c in cs:
            finite[c.name] = bool(torch.isfinite(_loss(c.model, x, y)).item())
    return TimingResult(
        workload=w,
        device=device,
        names=[c.name for c in cs],
        passes={c.name: c.passes for c in cs},
        cycles={c.name: c.cycle for c in cs},
        step_s=step_s,
        rounds=r,
        wall_s=time.perf_counter() - t_start,
        loadavg_before=load0,
        loadavg_after=os.getloadavg(),
        loss_finite=finite,
    )


# ----------------------------------------------------------------------------------- memory
def _param_ids(opt: torch.optim.Optimizer) -> set[int]:
    return {id(p) for g in opt.param_groups for p in g["params"]}


def state_bytes(opt: torch.optim.Optimizer) -> int:
    """Bytes of every tensor the optimizer object holds (state, buffers, base optimizer, ...),
    parameters excluded, each storage counted once."""
    params = _param_ids(opt)
    seen_obj: set[int] = set()
    storages: dict[tuple[str, int], int] = {}

    def visit(o: Any) -> None:
        if id(o) in seen_obj:
            return
        seen_obj.add(id(o))
        if isinstance(o, Tensor):
            if id(o) not in params:
                st = o.untyped_storage()
                storages[(str(o.device), st.data_ptr())] = st.nbytes()
        elif isinstance(o, dict):
            for k, v in o.items():
                visit(k)
                visit(v)
        elif isinstance(o, (list, tuple, set)):
            for v in o:
                visit(v)
        elif isinstance(o, torch.optim.Optimizer) or hasattr(o, "__dict__"):
            visit(vars(o))  # optimizers and the plain objects they keep state in (sharpness's)

    visit(opt)
    return sum(storages.values())


def param_bytes(model: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def _allocation_timeline(prof: profile) -> tuple[list[tuple[int, int]], list[tuple[str, int, int]]]:
    """(time_ns, running total of bytes allocated since the profile began) for every allocation
    record, and (name, start_ns, end_ns) of the bench's record_function marks."""
    from torch._C._profiler import _EventType

    allocs: list[tuple[int, int]] = []
    marks: list[tuple[str, int, int]] = []
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        n = stack.pop()
        if n.tag == _EventType.Allocation:
            if n.extra_fields.device.type == "cpu":
                allocs.append((n.start_time_ns, int(n.extra_fields.alloc_size)))
        elif n.name in (OPT_MARK, CLOSURE_MARK):
            marks.append((n.name, n.start_time_ns, n.end_time_ns))
        stack.extend(n.children)
    allocs.sort()
    total, timeline = 0, []
    for t, size in allocs:
        total += size
        timeline.append((t, total))
    return timeline, marks


def _peak_in(timeline: list[tuple[int, int]], t0: int, t1: int) -> int:
    """Peak of the running total inside [t0, t1] above its value at t0."""
    base = 0
    peak = 0
    for t, total in timeline:
        if t < t0:
            base = total
        elif t <= t1:
            peak = max(peak, total - base)
        else:
            break
    return peak


def _optimizer_segments(marks: list[tuple[str, int, int]]) -> list[tuple[int, int]]:
    """The optimizer marks minus the closure marks nested in them (the peer's step(closure) runs
    the forward-backward inside the optimizer call)."""
    closures = sorted((a, b) for n, a, b in marks if n == CLOSURE_MARK)
    segs = []
    for n, a, b in sorted(marks, key=lambda m: m[1]):
        if n != OPT_MARK:
            continue
        cur = a
        for c0, c1 in closures:
            if c0 >= a and c1 <= b:
                segs.append((cur, c0))
                cur = c1
        segs.append((cur, b))
    return segs


@dataclass
class MemoryRow:
    name: str
    param_bytes: int
    state_bytes: int  # persistent optimizer state at the start of a step
    opt_peak_bytes: int  # transient peak inside the optimizer calls
    step_peak_bytes: int  # peak of the running allocation total over the full step
    cuda_peak_bytes: int | None = None  # max_memory_allocated over a step (CUDA only)

    @property
    def total(self) -> int:
        return self.state_bytes + self.step_peak_bytes


def measure_memory(
    w: Workload, contenders: Sequence[str], seed: int = 0, cuda: bool | None = None
) -> list[MemoryRow]:
    """Memory of one full step per contender, after one warm-up step (so momentum and SAM's
    buffers exist), with the gradients freed as between steps. The first contender is the
    baseline (SGD) of ``memory_table``."""
    torch.set_num_threads(THREADS)
    torch.manual_seed(seed)
    model = w.build()
    x, y = _batch(w, torch.device("cpu"), seed)
    rows = []
    for c in make_contenders(model, w.batch, contenders):
        c.step(x, y)  # one warm-up step allocates momentum and the SAM buffers
        c.model.zero_grad(set_to_none=True)
        sb = state_bytes(c.optimizer)
        c.marks.enabled = True
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            c.step(x, y)
        c.marks.enabled = False
        timeline, marks = _allocation_timeline(prof)
        step_peak = max([0] + [tot for _, tot in timeline])
        opt_peak = max([0] + [_peak_in(timeline, a, b) for a, b in _optimizer_segments(marks)])
        rows.append(MemoryRow(c.name, param_bytes(c.model), sb, opt_peak, step_peak))
        del c
    if cuda if cuda is not None else torch.cuda.is_available():
        peaks = _cuda_peaks(w, contenders, seed)
        for row, pk in zip(rows, peaks):
            row.cuda_peak_bytes = pk
    return rows


def _cuda_peaks(w: Workload, contenders: Sequence[str], seed: int) -> list[int]:
    """Per contender, max_memory_allocated over one step minus what was allocated before the
    contender was built (the batch): params + grads + state + activations at the peak."""
    dev = torch.device("cuda")
    torch.manual_seed(seed)
    model = w.build()
    x, y = _batch(w, dev, seed)
    peaks = []
    for key in contenders:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated()
        c = make_contenders(copy.deepcopy(model).to(dev), w.batch, [key])[0]
        c.step(x, y)
        c.model.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        c.step(x, y)
        torch.cuda.synchronize()
        peaks.append(torch.cuda.max_memory_allocated() - base)
        del c
    return peaks


# ----------------------------------------------------------------------------------- report
def _mib(b: float) -> str:
    return f"{b / 2**20:.3f}"


def timing_table(res: TimingResult, sgd: str, peer: str) -> list[str]:
    lines = [
        f"{res.workload.title}; device {res.device}; {res.rounds} measured rounds x "
        f"{res.workload.block} step(s) after {res.workload.warmup} warm-up round(s), "
        f"{res.wall_s:.0f} s; load average {_load(res.loadavg_before)} before, "
        f"{_load(res.loadavg_after)} after.",
        "",
        "| optimizer | passes/step | median ms | IQR ms | x SGD | x peer SAM | paired x peer SAM |",
        "|---|---|---|---|---|---|---|",
    ]
    for n in res.names:
        q1, med, q3 = res.stats_ms(n)
        pr = res.paired_ratio(n, peer) if peer in res.names else None
        lines.append(
            f"| {n} | {res.passes[n]} | {med:.2f} | {q1:.2f}-{q3:.2f} | "
            f"{res.ratio(n, sgd):.2f} | "
            + (
                f"{res.ratio(n, peer):.2f} | {pr[1]:.2f} ({pr[0]:.2f}-{pr[2]:.2f}) |"
                if pr
                else "- | - |"
            )
        )
    bad = [n for n, ok in res.loss_finite.items() if not ok]
    if bad:
        lines += ["", f"WARNING: non-finite loss after the run for {bad}"]
    return lines


def memory_table(rows: list[MemoryRow]) -> list[str]:
    sgd = rows[0]
    pb = sgd.param_bytes
    cuda = any(r.cuda_peak_bytes is not None for r in rows)
    head = (
        "| optimizer | state MiB | peak in optimizer calls MiB | step peak MiB | "
        "extra over SGD MiB | extra / params |"
    )
    sep = "|---|---|---|---|---|---|"
    if cuda:
        head += " CUDA extra over SGD MiB | CUDA extra / params |"
        sep += "---|---|"
    lines = [f"Parameters: {pb} bytes ({_mib(pb)} MiB).", "", head, sep]
    for r in rows:
        extra = r.total - sgd.total
        line = (
            f"| {r.name} | {_mib(r.state_bytes)} | {_mib(r.opt_peak_bytes)} | "
            f"{_mib(r.step_peak_bytes)} | {_mib(extra)} | {extra / pb:.3f} |"
        )
        if cuda:
            ce = r.cuda_peak_bytes - sgd.cuda_peak_bytes  # type: ignore[operator]
            line += f" {_mib(ce)} | {ce / pb:.3f} |"
        lines.append(line)
    return lines


def _load(la: Sequence[float]) -> str:
    return "/".join(f"{v:.2f}" for v in la)


def machine_description() -> str:
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        model = platform.processor() or model
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return (
        f"{model}, {os.cpu_count()} logical cores, torch.set_num_threads({THREADS}), "
        f"torch {torch.__version__}, Python {platform.python_version()}, GPU: {gpu}"
    )


def _verdict(ok: bool) -> str:
    return "pass" if ok else "FAIL"


SAM_NAME, LOOKSAM_NAME, PEER_SAM_NAME = (
    "SAM (ours)",
    f"LookSAM (ours, k={K})",
    "pytorch-optimizer SAM",
)


def targets_table(a: TimingResult, b: TimingResult, mem: dict[str, list[MemoryRow]]) -> list[str]:
    """The issue's targets. Time verdicts use the paired ratio (median over rounds of the ratio
    of two contenders measured side by side), which cancels load changes between rounds; the
    ratio of the medians is shown next to it."""
    sgd = a.names[0]
    lines = [
        "### Targets (CPU)",
        "",
        "| target | paired ratio (IQR) | ratio of medians | verdict |",
        "|---|---|---|---|",
    ]
    for res, num, den, bound, label in (
        (a, SAM_NAME, PEER_SAM_NAME, 1.0, "SAM <= 1.0x pytorch-optimizer SAM on (a)"),
        (b, SAM_NAME, PEER_SAM_NAME, 0.9, "SAM <= 0.9x pytorch-optimizer SAM on (b)"),
        (a, LOOKSAM_NAME, sgd, 1.3, f"LookSAM(k={K}) <= 1.3x SGD on (a)"),
    ):
        q1, med, q3 = res.paired_ratio(num, den)
        note = "" if med <= bound or q1 > bound else " (bound inside the IQR)"
        lines.append(
            f"| {label} | {med:.3f} ({q1:.3f}-{q3:.3f}) | {res.ratio(num, den):.3f} | "
            f"{_verdict(med <= bound)}{note} |"
        )
    for key, rows in mem.items():
        base = rows[0]
        for r in rows:
            if r.name in (SAM_NAME, PEER_SAM_NAME):
                x = (r.total - base.total) / r.param_bytes
                verdict = _verdict(x <= MEMORY_SLACK) if r.name == SAM_NAME else "(peer, no target)"
                lines.append(
                    f"| {r.name}: extra memory over SGD <= 1 parameter copy on ({key}) | - | "
                    f"{x:.3f}x | {verdict} |"
                )
    return lines


# The memory target allows 1% over one parameter copy for scalar temporaries (norms, flags).
MEMORY_SLACK = 1.01


def main() -> str:
    torch.set_num_threads(THREADS)
    t0 = time.perf_counter()
    out = ["## Core optimizers", "", f"Machine: {machine_description()}.", ""]
    results = {}
    for w, keys in (
        (resnet_workload(), ["sgd", "sam", "looksam", "msam", "peer_sam", "peer_looksam"]),
        (
            mlp_workload(),
            ["sgd", "sam", "looksam", "msam", "peer_sam", "peer_sam_foreach", "peer_looksam"],
        ),
    ):
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
        for device in devices:
            print(f"timing {w.title} on {device}", flush=True)
            res = measure_times(w, keys, device=device)
            results[(w.key, device)] = res
            out += [f"### {w.title.split(' ', 1)[0]} step time, {device}", ""]
            out += timing_table(res, res.names[0], "pytorch-optimizer SAM")
            out.append("")
            print("\n".join(timing_table(res, res.names[0], "pytorch-optimizer SAM")), flush=True)
    mem = {}
    for w in (resnet_workload(), mlp_workload()):
        print(f"memory {w.title}", flush=True)
        mem[w.key] = measure_memory(w, ["sgd", "sam", "peer_sam", "looksam"])
        out += [f"### {w.title.split(' ', 1)[0]} memory of one step (CPU profiler)", ""]
        out += memory_table(mem[w.key]) + [""]

    out += targets_table(results[("a", "cpu")], results[("b", "cpu")], mem) + [""]
    out += [
        "",
        f"Whole benchmark: {time.perf_counter() - t0:.0f} s; load average at the end "
        f"{_load(os.getloadavg())}.",
    ]
    return "\n".join(out)


if __name__ == "__main__":
    print(main())
