"""PAPERS.md is the repository's one source for the papers' settings and numbers: every
``PAPERS.md#anchor`` cited anywhere in the repository names a section that exists, and nothing
points at a document outside the repository instead."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAPERS = ROOT / "PAPERS.md"
CITATION = re.compile(r"PAPERS\.md#([A-Za-z0-9_-]+)")
# The private notes the suite was first written from; spelled in two pieces so that this file
# does not cite it.
OUTSIDE = "REFERENCE" + ".md"


def anchors(text: str) -> set[str]:
    """The ids of the document's explicit ``<a id="...">`` anchors."""
    return set(re.findall(r'<a id="([^"]+)"></a>', text))


def tracked_texts() -> dict[str, str]:
    """Every tracked text file of the repository (the working tree's version), but this test and
    the planted faults, which hold broken citations on purpose."""
    names = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.split(b"\0")
    out = {}
    for n in filter(None, names):
        if n.decode() == "tests/test_papers.py" or n.decode().startswith("tests/faults/"):
            continue
        path = ROOT / n.decode()
        try:
            out[n.decode()] = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, FileNotFoundError, IsADirectoryError):
            continue  # binary files and paths deleted in the working tree
    return out


def citations(texts: dict[str, str]) -> list[tuple[str, int, str]]:
    """(file, line, anchor) of every ``PAPERS.md#anchor`` and, inside PAPERS.md, every ``(#x)``."""
    found = []
    for name, text in texts.items():
        for i, line in enumerate(text.splitlines(), 1):
            found += [(name, i, a) for a in CITATION.findall(line)]
            if name == "PAPERS.md":
                found += [(name, i, a) for a in re.findall(r"\]\(#([^)]*)\)", line)]
    return found


def test_every_citation_names_a_section_of_papers_md():
    texts = tracked_texts()
    ids = anchors(PAPERS.read_text(encoding="utf-8"))
    cited = citations(texts)
    assert len(cited) >= 30  # the code, configs and tests cite it; an empty scan proves nothing
    missing = [f"{f}:{i}: #{a}" for f, i, a in cited if a not in ids]
    assert not missing, "PAPERS.md has no such section:\n" + "\n".join(missing)


def test_anchors_are_unique():
    ids = re.findall(r'<a id="([^"]+)"></a>', PAPERS.read_text(encoding="utf-8"))
    assert len(ids) == len(set(ids)), "duplicate anchors in PAPERS.md"


def test_nothing_cites_a_document_outside_the_repository():
    hits = [
        f"{name}:{i}"
        for name, text in tracked_texts().items()
        for i, line in enumerate(text.splitlines(), 1)
        if OUTSIDE in line
    ]
    assert not hits, f"{OUTSIDE} is not in the repository; cite PAPERS.md#<section>: {hits}"


def test_the_check_sees_a_broken_citation():
    """The scanner itself: a made-up anchor is reported, a real one is not."""
    texts = {"a.py": "x  # PAPERS.md#no-such-section\ny  # PAPERS.md#sam\n"}
    ids = anchors(PAPERS.read_text(encoding="utf-8"))
    bad = [a for _, _, a in citations(texts) if a not in ids]
    assert bad == ["no-such-section"]
