"""Every notebook under notebooks/: committed without outputs, executed headless for real.

- no notebook stores outputs or execution counts (they would go stale with the results);
- every notebook runs in a real Jupyter kernel (nbclient) on an empty results folder and says which
  command makes its results (printed, or in the error it raises), instead of failing obscurely;
- notebooks/overview.ipynb runs on a tiny results set made here (claims of two families, one
  figure each with its caption, one family missing) and shows the claims and the key figures;
- every family notebook is executed on real results by some test (its family's own test makes
  the tiny results set; running all of them here again would double their cost).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
COMMANDS = ("make reproduce", "python -m analysis.reproduce")


async def _execute(path: Path, results: Path, figures: Path) -> tuple[Any, str]:
    """Run ``path`` in a python3 kernel from the repository root; (executed notebook, all its
    text output, the error included, if any)."""
    env = {
        **os.environ,
        "SHARPNESS_RESULTS": str(results),
        "SHARPNESS_FIGURES": str(figures),
        "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb, kernel_name="python3", timeout=180, resources={"metadata": {"path": str(ROOT)}}
    )
    error = ""
    try:
        await client.async_execute(env=env)
    except CellExecutionError as e:
        error = str(e)
    text = "".join(
        o.get("text", "") + str(o.get("data", {}).get("text/plain", "")) + str(o.get("evalue", ""))
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.get("outputs", [])
    )
    return nb, text + error


def tiny_results(root: Path) -> tuple[Path, Path, list[str]]:
    """Claims of the first two families (one reproduced, one contradicted), two figures each
    (one captioned as the key figure), no results for the others; returns (results, figures,
    families with results)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from analysis import stages
    from suite.captions import caption_figure
    from suite.claims import verdict, write_claims

    have = [f for f, _ in stages.STAGES][:2]
    results, figures = root / "results", root / "figures"
    figures.mkdir(parents=True)
    for i, fam in enumerate(have):
        gap, se = (1.0, 0.2) if i == 0 else (-1.0, 0.2)
        write_claims(
            results / fam / "claims.csv",
            [
                dict(
                    family=fam,
                    paper=f"Paper {i}",
                    claim=f"claim of {fam}",
                    paper_value="1",
                    ours="0.9 +- 0.1 (3 seeds)",
                    gap=gap,
                    se=se,
                    df="inf",
                    kind="effect",
                    sesoi=0.0,
                    profile="quick",
                    verdict=verdict(gap, se, float("inf")),
                    figure=f"{fam}_key.png",
                    note="",
                )
            ],
        )
        for name in (f"{fam}_key.png", f"{fam}_other.png"):
            fig, ax = plt.subplots(figsize=(2, 2))
            ax.plot([0, 1], [i, 1 - i])
            fig.savefig(figures / name)
            plt.close(fig)
        caption_figure(results, fam, f"{fam}_other.png", shows="Other.", reading="Other.")
        caption_figure(
            results, fam, f"{fam}_key.png", shows=f"Key of {fam}.", reading="It holds.", key=True
        )
    return results, figures, have


@pytest.fixture(scope="module")
def executed(tmp_path_factory) -> dict[str, Any]:
    """Every notebook on an empty results folder and the overview on the tiny set, executed
    concurrently (each kernel mostly waits on imports; one after the other costs ~4x)."""
    empty = tmp_path_factory.mktemp("empty")
    (empty / "results").mkdir()
    results, figures, have = tiny_results(tmp_path_factory.mktemp("tiny"))
    jobs = [_execute(p, empty / "results", empty / "figures") for p in NOTEBOOKS]
    jobs.append(_execute(ROOT / "notebooks" / "overview.ipynb", results, figures))

    async def run_all() -> list:
        return await asyncio.gather(*jobs)

    done = asyncio.run(run_all())
    return {
        "empty": {p.name: done[i] for i, p in enumerate(NOTEBOOKS)},
        "overview": done[-1],
        "have": have,
    }


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_no_stored_outputs(path):
    nb = nbformat.read(path, as_version=4)
    for i, c in enumerate(nb.cells):
        if c.cell_type == "code":
            assert c.get("outputs") == [], f"{path.name} cell {i}: clear its outputs before commit"
            assert c.get("execution_count") is None, f"{path.name} cell {i}: execution count"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_missing_results_name_the_command(path, executed):
    _, text = executed["empty"][path.name]
    assert any(cmd in text for cmd in COMMANDS), text[-1500:]


def test_overview_on_a_tiny_results_set(executed):
    from analysis import stages

    nb, text = executed["overview"]
    have = executed["have"]
    absent = [f for f, _ in stages.STAGES if f not in have]
    assert "Traceback" not in text, text[-2000:]
    for fam in have:
        assert f"claim of {fam}" in text
    assert "reproduced" in text and "contradicted" in text
    for fam in absent:  # a family without results: not run, with its command
        assert f"--only {fam}" in text
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    md = [o["data"]["text/markdown"] for o in outputs if "text/markdown" in o.get("data", {})]
    assert md == [f"**{fam}: {fam}_key.png.** Key of {fam}.  \nIt holds." for fam in have]
    assert sum("image/png" in o.get("data", {}) for o in outputs) == len(have)


def test_every_family_notebook_is_executed_on_results_by_a_test():
    tests = {p.name: p.read_text() for p in (ROOT / "tests").glob("test_*.py")}
    for nb in NOTEBOOKS:
        if nb.name == "overview.ipynb":
            continue
        runners = [
            name
            for name, text in tests.items()
            if name != Path(__file__).name
            and nb.stem in text
            and ".ipynb" in text
            and "NotebookClient" in text
        ]
        assert runners, f"no test executes notebooks/{nb.name} on results (nbclient)"
