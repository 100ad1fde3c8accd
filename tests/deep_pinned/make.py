"""Regenerate tests/deep_pinned/pinned.json (all variants, or those named on the command line).

    PYTHONPATH=$PWD .venv/bin/python -m tests.deep_pinned.make [NAME ...]

Run it only for an intended change of behaviour, and name the entries and the reason in the commit.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from tests.deep_pinned.variants import VARIANTS, run_variant

PINNED = Path(__file__).with_name("pinned.json")


def main(names: list[str]) -> None:
    data = json.loads(PINNED.read_text()) if PINNED.exists() else {}
    for name in names or list(VARIANTS):
        with tempfile.TemporaryDirectory() as d:
            data[name] = {"flags": VARIANTS[name], **run_variant(name, Path(d) / name)}
        print("pinned", name, flush=True)
    data = {k: data[k] for k in VARIANTS if k in data}
    PINNED.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
