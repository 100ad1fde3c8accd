"""What the core demo measures on its finished runs (never training them): lambda_max of saved
weights, and the step cost of SGD, SAM and LookSAM.

- ``lambda_max``: the top eigenvalue of the Hessian of the mean cross-entropy on the first
  ``n`` training examples, at a checkpoint the trainer saved (``checkpoint.pt``: the last epoch;
  ``epoch_<e>.pt``: ``--save_model_each_k_epochs``), by power iteration
  (``sharpness.measures.hessian_top_eigenvalue``; at most 100 Hessian-vector products, relative
  tolerance 1e-4, the start vector from the run's seed). Model and data come from the run
  directory through ``deep_nets.eval_sharpness.load_run``, the one reader of the trainer's format.
- ``test_outcome``: which test examples the weights of a checkpoint get wrong (argmax of the
  logits != label, in eval mode), as a ``suite.stats.Outcome`` with the run's seed and the
  SHA-256 naming the test examples (the generated data's digest and the split), so that runs of
  one seed are compared example by example (``suite.stats``: the paired design).
- ``step_cost``: full training steps of the demo's MLP timed as ``benchmarks/bench_core.py``
  times them (``measure_times``: every contender on its own copy of one model and batch,
  round-robin in a fresh random order each round, ``k`` consecutive steps per contender per
  round, so that a LookSAM round holds exactly one ascent), one thread.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from analysis.core.profiles import METHODS
from suite.stats import Outcome

CHECKPOINT = "checkpoint.pt"


def saved_epochs(run_dir: Path) -> dict[int, str]:
    """{epoch: checkpoint file name} of the weights a finished run kept (``epoch_<e>.pt``, and
    ``checkpoint.pt`` for the last epoch)."""
    from suite.rundir import read_json

    d = Path(run_dir)
    out = {int(p.stem.split("_")[1]): p.name for p in d.glob("epoch_*.pt")}
    epochs = int(read_json(d / "config.json", want_dict=True)["config"]["epochs"])
    out[epochs] = CHECKPOINT
    return dict(sorted(out.items()))


def lambda_max(run_dir: Path, checkpoint: str, n: int, seed: int) -> float:
    """Top Hessian eigenvalue of the training cross-entropy on the first ``n`` training
    examples, at ``run_dir/checkpoint`` (module docstring)."""
    from deep_nets.eval_sharpness import load_run
    from sharpness.measures import hessian_top_eigenvalue

    torch.set_num_threads(1)
    run = load_run(str(Path(run_dir) / checkpoint), torch.device("cpu"))
    x, y = run.splits.train_x[:n], run.splits.train_y[:n]
    return hessian_top_eigenvalue(
        lambda: F.cross_entropy(run.model(x), y),
        list(run.model.parameters()),
        iters=100,
        tol=1e-4,
        generator=torch.Generator().manual_seed(seed),
    )


def test_outcome(run_dir: Path, checkpoint: str = CHECKPOINT) -> Outcome:
    """The 0/1 test errors of ``run_dir/checkpoint`` (module docstring)."""
    from deep_nets.eval_sharpness import load_run

    torch.set_num_threads(1)
    run = load_run(str(Path(run_dir) / checkpoint), torch.device("cpu"))
    s = run.splits
    with torch.no_grad():
        wrong = torch.cat(
            [run.model(s.test_x[i : i + 1000]).argmax(1) for i in range(0, len(s.test_y), 1000)]
        ).ne(s.test_y)
    data = s.info.get("generated_sha256") or ",".join(f["sha256"] for f in s.info["files"])
    digest = hashlib.sha256(f"{data}:test:{len(s.test_y)}".encode()).hexdigest()
    return Outcome(int(run.config["seed"]), digest, wrong.double().numpy())


def matched_epoch(train_loss: dict[int, float], target: float) -> int:
    """The first of the saved epochs (``{epoch: training loss}``) whose training loss is at or
    below ``target``; the last one when none is."""
    below = [e for e, v in sorted(train_loss.items()) if v <= target]
    return below[0] if below else max(train_loss)


def step_cost(P: dict[str, Any], rounds: int, seed: int = 0) -> dict[str, list[float]]:
    """Per-round mean step time (seconds) of SGD, SAM and LookSAM on the profile's MLP and
    batch, ``rounds`` rounds after 2 warm-up rounds (module docstring). The rounds are paired:
    entry i of every list was measured in the same round."""
    from benchmarks import bench_core as B
    from deep_nets.config import INPUT_SHAPES
    from deep_nets.models import build_model

    base, k = P["base"], METHODS["looksam"]["looksam_k"]
    if k != B.K:
        raise ValueError(f"LookSAM k {k}: benchmarks/bench_core.py times k = {B.K}")
    shape = INPUT_SHAPES[base["dataset"]]

    def build() -> torch.nn.Module:
        return build_model(
            base["model"],
            in_channels=shape[0],
            num_classes=10,
            width=base["model_width"],
            input_shape=shape,
        )

    w = B.Workload(
        key="core",
        title="core demo MLP",
        build=build,
        input_shape=shape,
        num_classes=10,
        batch=base["batch_size"],
        warmup=2,
        min_rounds=rounds,
        max_rounds=rounds,
        block=k,
        budget_s=0.0,
    )
    res = B.measure_times(w, ["sgd", "sam", "looksam"], seed=seed, verbose=False)
    names = dict(zip(("sgd", "sam", "looksam"), res.names, strict=True))
    return {key: res.samples(name, 1) for key, name in names.items()}
