"""Figure captions: each stage says what its figures show, REPORT.md prints it under each figure.

A stage records one entry per figure it drew in ``results/<family>/figures.json``:

    caption_figure(results_dir, "deep_nets", "deep_nets_curves.png",
                   shows="Test error per epoch, ERM vs SAM vs m-SAM, MNIST-1D MLP, 2 seeds.",
                   reading="m-SAM ends lowest; SAM at m = batch stays near ERM (Fig. 1's claim).",
                   key=True)

Two lines: ``shows`` (what is plotted: data, model, axes, seeds) and ``reading`` (what to read
from it: the claim it bears on). ``key=True`` marks the family's key figure (shown in
notebooks/overview.ipynb). The figure file itself lives in the figures directory; an entry is
replaced when the same file is captioned again, so re-running a stage never duplicates it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from suite.rundir import atomic_write_json, read_json

CAPTIONS = "figures.json"


def caption_figure(
    results_dir: str | os.PathLike,
    family: str,
    file: str,
    *,
    shows: str,
    reading: str,
    key: bool = False,
) -> None:
    """Record (or replace) the two-line caption of figure ``file`` (a name in the figures dir)."""
    if Path(file).name != file:
        raise ValueError(f"figure {file!r}: give the file name inside the figures directory")
    for name, text in (("shows", shows), ("reading", reading)):
        if not text.strip() or "\n" in text.strip():
            raise ValueError(f"caption {name} of {file}: one non-empty line, got {text!r}")
    path = Path(results_dir) / family / CAPTIONS
    entries = [e for e in read_captions(results_dir, family) if e["file"] != file]
    if key:  # one key figure per family
        entries = [{**e, "key": False} for e in entries]
    entries.append({"file": file, "shows": shows.strip(), "reading": reading.strip(), "key": key})
    atomic_write_json(path, entries)


def read_captions(results_dir: str | os.PathLike, family: str) -> list[dict[str, Any]]:
    """The caption entries of ``family`` (empty when the stage recorded none)."""
    path = Path(results_dir) / family / CAPTIONS
    if not path.exists():
        return []
    entries = read_json(path)
    if not isinstance(entries, list) or not all(
        isinstance(e, dict) and {"file", "shows", "reading"} <= set(e) for e in entries
    ):
        raise ValueError(f"{path}: expected a list of {{file, shows, reading, key}} objects")
    return entries
