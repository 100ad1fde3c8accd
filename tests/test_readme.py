"""The library's documentation runs as written (issue 21): every ```python block of README.md's
library section (each in a fresh namespace after the section's set-up block) and of the
library's docstrings; and every public name of ``sharpness`` has a docstring of its own."""

from __future__ import annotations

import importlib
import inspect
import os
import pkgutil
import re
import socket
import warnings
from pathlib import Path

import pytest
import torch.distributed as dist

import sharpness

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^[ \t]*```python\n(.*?)^[ \t]*```", re.S | re.M)


def _library_section() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index("## The library\n")
    end = text.index("\n## ", start + 1)
    return text[start:end]


def _blocks(text: str) -> list[str]:
    import textwrap

    return [textwrap.dedent(b) for b in FENCE.findall(text)]


README_BLOCKS = _blocks(_library_section())


def _modules():
    yield sharpness
    for info in pkgutil.walk_packages(sharpness.__path__, "sharpness."):
        if not any(part.startswith("_") for part in info.name.split(".")):
            yield importlib.import_module(info.name)


def _public(module):
    names = getattr(module, "__all__", None)
    if names is None:
        names = [n for n in vars(module) if not n.startswith("_")]
    for name in names:
        obj = getattr(module, name)
        origin = obj.__name__ if inspect.ismodule(obj) else getattr(obj, "__module__", "")
        if origin.startswith("sharpness"):
            yield f"{module.__name__}.{name}", obj


def _docstring_blocks() -> list[tuple[str, str]]:
    found = []
    for module in _modules():
        objs = [(module.__name__, module), *_public(module)]
        for name, obj in list(objs):
            if inspect.isclass(obj):
                objs += [(f"{name}.{k}", v) for k, v in vars(obj).items() if callable(v)]
        for name, obj in objs:
            for block in _blocks(inspect.getdoc(obj) or ""):
                found.append((name, block))
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_section_has_its_blocks():
    assert len(README_BLOCKS) >= 12  # set-up, SAM, closure, ASAM, keywords, LookSAM, m-SAM, ...
    assert "model =" in README_BLOCKS[0] and "loader =" in README_BLOCKS[0]


@pytest.mark.parametrize("index", range(1, len(README_BLOCKS)))
def test_readme_library_block_runs_as_written(index, monkeypatch):
    block = README_BLOCKS[index]
    if "init_process_group" in block:  # what torchrun sets for a one-process job
        for k, v in dict(
            RANK="0",
            WORLD_SIZE="1",
            LOCAL_RANK="0",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(_free_port()),
        ).items():
            monkeypatch.setenv(k, v)
    namespace: dict = {"__name__": "__readme__"}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a snippet that warns is not "as written"
            exec(compile(README_BLOCKS[0], "README set-up", "exec"), namespace)
            exec(compile(block, f"README block {index}", "exec"), namespace)
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


def test_docstring_code_blocks_run_as_written():
    blocks = _docstring_blocks()
    assert blocks, "the library's docstrings have no ```python example"
    for name, block in blocks:
        exec(compile(block, f"docstring of {name}", "exec"), {"__name__": "__doc__"})


def test_every_public_name_has_its_own_docstring():
    """Public functions, classes and modules, and every public method a ``sharpness`` class
    defines (an override without a docstring shows its parent's text, e.g. torch's)."""
    missing, seen = [], 0
    for module in _modules():
        for name, obj in [(module.__name__, module), *_public(module)]:
            seen += 1
            if not (obj.__doc__ or "").strip():
                missing.append(name)
            if inspect.isclass(obj):
                for k, v in vars(obj).items():
                    if k.startswith("_") or not (callable(v) or isinstance(v, property)):
                        continue
                    seen += 1
                    fn = v if isinstance(v, property) else getattr(v, "__func__", v)
                    if not (fn.__doc__ or "").strip():
                        missing.append(f"{name}.{k}")
    assert seen > 50 and not missing, missing


def test_readme_is_not_the_only_place_the_version_lives():
    assert re.fullmatch(r"\d+\.\d+\.\d+", sharpness.__version__)
    assert 'version = { attr = "sharpness.__version__" }' in (ROOT / "pyproject.toml").read_text()
    assert "MIT" in (ROOT / "LICENSE").read_text() and "MIT license" in _library_section()
    assert os.path.exists(Path(sharpness.__file__).parent / "py.typed")
