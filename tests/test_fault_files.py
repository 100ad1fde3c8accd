"""The planted-fault lists under tests/faults/ stay runnable: every entry names a file of the
repository and a "find" text that occurs in it exactly once (what ../tools/plant-faults needs to
plant it), and no two entries of a list share a name. A refactor that moves the code a fault
targets must move the fault too; this test says which entry went stale."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LISTS = sorted((ROOT / "tests" / "faults").glob("*.json"))


def test_there_are_fault_lists():
    assert len(LISTS) >= 10


@pytest.mark.parametrize("path", LISTS, ids=lambda p: p.name)
def test_every_fault_entry_matches_its_file_once(path):
    entries = json.loads(path.read_text())
    assert isinstance(entries, list) and entries, f"{path.name}: a non-empty list of faults"
    names = [e.get("name") for e in entries]
    assert len(set(names)) == len(names), f"{path.name}: duplicate fault names"
    stale = []
    for e in entries:
        assert set(e) >= {"name", "file", "find", "replace"}, f"{path.name}: {e.get('name')}"
        assert e["find"] != e["replace"], f"{path.name}: {e['name']} plants nothing"
        target = ROOT / e["file"]
        n = target.read_text().count(e["find"]) if target.is_file() else -1
        if n != 1:
            stale.append(
                f"{e['name']!r} ({e['file']}: found {n}x)"
                if n >= 0
                else f"{e['name']!r} ({e['file']}: no such file)"
            )
    assert not stale, f"{path.name}: stale entries: {', '.join(stale)}"
