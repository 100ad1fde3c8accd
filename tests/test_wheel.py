"""The library as a user installs it: build the wheel from a copy of this checkout, check what it
holds, install it into a fresh virtual environment that has torch and numpy only, and take a SAM,
an ASAM and a LookSAM step there (issue 21).

The fresh venv has no system site-packages. Its torch and numpy are the ones already installed
here (the same files the suite's pinned wheels put on disk, linked, not copied: installing a
torch wheel again would take minutes), together with their own declared dependencies and nothing
else: no pytest, no pytorch-optimizer, no suite packages. Its working directory is outside the
checkout and PYTHONPATH is unset, so ``import sharpness`` can only find the installed wheel.
"""

from __future__ import annotations

import importlib.metadata as md
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUITE = [
    "suite",
    "analysis",
    "benchmarks",
    "deep_nets",
    "diagonal_linear_nets",
    "one_layer_relu_nets",
]
IGNORE = shutil.ignore_patterns(
    ".venv",
    ".git",
    "results",
    "figures",
    "runs",
    "data",
    "build",
    "dist",
    "__pycache__",
    "*.egg-info",
    ".pytest_cache",
    ".ruff_cache",
    ".ipynb_checkpoints",
    "REPORT.md",
)

IN_VENV = r"""
import importlib, importlib.metadata as md, sys, sysconfig
import torch
from torch import nn
import sharpness
from sharpness import SAM, LookSAM

assert sharpness.__file__.startswith(sysconfig.get_paths()["purelib"]), sharpness.__file__
assert sharpness.__version__ == md.version("sharpness"), sharpness.__version__
for name in SUITE + ["pytest", "pytorch_optimizer", "scipy", "pandas"]:
    try:
        importlib.import_module(name)
    except ModuleNotFoundError:
        continue
    raise SystemExit(f"{name} is importable in the fresh venv")


def run(make, steps=3):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 2))
    opt = make(model)
    x, y = torch.randn(16, 4), torch.randint(0, 2, (16,))
    w0 = [p.detach().clone() for p in model.parameters()]
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        if opt.first_step(zero_grad=True):
            nn.functional.cross_entropy(model(x), y).backward()
        opt.second_step(zero_grad=True)
    moved = max((p - w).abs().max().item() for p, w in zip(model.parameters(), w0))
    assert 0 < moved < 1 and all(torch.isfinite(p).all() for p in model.parameters()), moved
    return moved


sgd = dict(lr=0.1, momentum=0.9)
print("SAM", run(lambda m: SAM(m.parameters(), torch.optim.SGD, rho=0.05, **sgd)))
print("ASAM", run(lambda m: SAM(m.named_parameters(), torch.optim.SGD, rho=0.5, adaptive=True,
                                eta=0.01, **sgd)))
print("LookSAM", run(lambda m: LookSAM(m.parameters(), torch.optim.SGD, rho=0.05, k=2, **sgd)))
"""


def _dist_closure(names: list[str]) -> dict[str, md.Distribution]:
    """The installed distributions ``names`` and, recursively, their non-extra requirements."""
    found: dict[str, md.Distribution] = {}
    todo = list(names)
    while todo:
        name = todo.pop()
        key = re.sub(r"[-_.]+", "-", name).lower()
        if key in found:
            continue
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:  # a platform-specific requirement not installed here
            continue
        found[key] = dist
        for req in dist.requires or []:
            if "extra ==" not in req:
                todo.append(re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", req).group())
    return found


def _link_torch_and_numpy(dest: Path) -> list[str]:
    """Symlink the top-level entries of torch, numpy and their dependencies into ``dest``."""
    dest.mkdir()
    dists = _dist_closure(["torch", "numpy"])
    for dist in dists.values():
        site = Path(dist.locate_file(""))
        tops = {Path(f).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
        for top in tops - {"__pycache__"}:
            if (site / top).exists() and not (dest / top).exists():
                (dest / top).symlink_to(site / top)
    return sorted(dists)


def test_the_wheel_holds_sharpness_only_and_works_in_a_fresh_venv(tmp_path):
    t0 = time.perf_counter()
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=IGNORE)  # the build writes build/ and *.egg-info there
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "-w",
            str(tmp_path / "dist"),
            str(src),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    version = re.search(r'__version__ = "([^"]+)"', (ROOT / "sharpness/__init__.py").read_text())
    assert wheel.name == f"sharpness-{version.group(1)}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as zf:
        names = sorted(zf.namelist())
        meta = zf.read(f"sharpness-{version.group(1)}.dist-info/METADATA").decode()
    print(f"{wheel.name}: {len(names)} files\n  " + "\n  ".join(names))
    info = f"sharpness-{version.group(1)}.dist-info/"
    assert all(n.startswith(("sharpness/", info)) for n in names), names
    assert "sharpness/py.typed" in names and f"{info}licenses/LICENSE" in names
    assert {n for n in names if n.endswith(".py")} == {
        f"sharpness/{p.relative_to(ROOT / 'sharpness').as_posix()}"
        for p in (ROOT / "sharpness").rglob("*.py")
    }
    assert re.findall(r"^Requires-Dist: (.*)$", meta, re.M) == ["torch>=2.1", "numpy"]
    assert "License-Expression: MIT" in meta
    built = time.perf_counter()

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    dists = _link_torch_and_numpy(tmp_path / "torch_numpy")
    purelib = subprocess.run(
        [py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    assert purelib != sysconfig.get_paths()["purelib"]
    (Path(purelib) / "torch_numpy.pth").write_text(str(tmp_path / "torch_numpy") + "\n")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(py),
            "install",
            "-q",
            "--no-index",
            "--no-deps",
            str(wheel),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["OMP_NUM_THREADS"] = "1"
    out = subprocess.run(
        [py, "-c", f"SUITE = {SUITE!r}\n" + IN_VENV],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert [line.split()[0] for line in out.stdout.splitlines()] == ["SAM", "ASAM", "LookSAM"]
    done = time.perf_counter()
    print(f"fresh venv with {', '.join(dists)}")
    print(f"build {built - t0:.1f} s, venv + install + three steps {done - built:.1f} s")
