"""The stages of ``make reproduce``, in order, and what the paper profile needs before it starts.

``analysis.reproduce`` runs them and ``analysis.report`` lists them (this module is what both
read, so neither imports the other). Each stage is a module with
``reproduce(profile, results_dir, figures_dir)``: a list of ``suite.stage.Experiment``s run by
``suite.stage.run_stage``.
"""

from __future__ import annotations

from pathlib import Path

# (family, module): add a family here when it lands.
STAGES = [
    ("core", "analysis.core"),
    ("deep_nets", "analysis.deep_nets"),
    ("diagonal_linear_nets", "analysis.diagonal_linear_nets"),
    ("one_layer_relu_nets", "analysis.one_layer_relu_nets"),
    ("measures", "analysis.measures"),
]
# Relative cost of each stage's quick profile: weights the progress bar's ETA (default 1).
STAGE_COST = {
    "core": 2.0,
    "deep_nets": 4.0,
    "diagonal_linear_nets": 2.0,
    "one_layer_relu_nets": 5.0,
    "measures": 2.0,
}
JOB_RECORD = "reproduce.json"  # the job record analysis.report reads


# ----------------------------------------------------------------------------- preflight
# The paper profile's data: (name, files that must exist, the command that fetches them).
def _paper_data() -> list[tuple[str, list[Path], str]]:
    from deep_nets.data import default_data_dir

    base = default_data_dir()
    fetch = (
        "python -c \"from deep_nets.data import load_dataset; load_dataset('{}', None, seed=0)\""
    )
    cifar10 = base / "cifar-10-batches-py"
    cifar100 = base / "cifar-100-python"
    fmnist = Path("/usr/share/datasets/fashion-mnist")
    return [
        (
            "CIFAR-10",
            [cifar10 / f"data_batch_{i}" for i in range(1, 6)] + [cifar10 / "test_batch"],
            fetch.format("cifar10") + f"  (downloads into {base}; set SHARPNESS_DATA_DIR to move)",
        ),
        (
            "CIFAR-100",
            [cifar100 / "train", cifar100 / "test"],
            fetch.format("cifar100") + f"  (downloads into {base})",
        ),
        (
            "Fashion-MNIST",
            [fmnist / "train-images-idx3-ubyte.gz", fmnist / "t10k-images-idx3-ubyte.gz"],
            "sudo apt-get install dataset-fashion-mnist  (or `make data` as root)",
        ),
    ]


# Stages whose paper profile trains on CIFAR with a GPU (the others' paper settings run on a CPU).
PAPER_NEEDS_GPU = ("deep_nets",)


def preflight(profile: str, launcher: str, stages: list[str] | None = None) -> list[str]:
    """What the profile needs and this machine lacks, each with the command that fixes it
    (``stages``: the selected families; default all)."""
    if profile != "paper" or not set(stages or PAPER_NEEDS_GPU) & set(PAPER_NEEDS_GPU):
        return []
    problems = []
    if launcher == "local":  # with slurm / submitit the GPU is the compute node's business
        import torch

        if not torch.cuda.is_available():
            build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "the CPU build"
            problems.append(
                f"no GPU: torch {torch.__version__} ({build}) sees no CUDA device. Run on a GPU "
                "host with the CUDA build of the same torch: `.venv/bin/pip install "
                f"torch=={torch.__version__.split('+')[0]} --index-url "
                "https://download.pytorch.org/whl/cu126`, or `docker build --build-arg "
                "TORCH_VARIANT=cu126 -t sharpness-gpu .` and `docker run --gpus all ...` (README, "
                "Docker), or submit to a cluster: `--launcher slurm --partition <gpu partition>`"
            )
    for name, files, fix in _paper_data():
        missing = [f for f in files if not f.is_file()]
        if missing:
            problems.append(f"{name} missing ({missing[0]} not found): {fix}")
    return problems
