"""Regenerate tests/deep_pinned/pinned.json (all variants, or those named on the command line).

    PYTHONPATH=$PWD .venv/bin/python -m tests.deep_pinned.make [NAME ...]

Run it only for an intended change of behaviour, and name the entries and the reason in the commit.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch

from tests.deep_pinned.variants import FLOAT32_VARIANTS, VARIANTS, run_variant

PINNED = Path(__file__).with_name("pinned.json")


def main(names: list[str]) -> None:
    data = json.loads(PINNED.read_text()) if PINNED.exists() else {}
    for name in names or list(VARIANTS):
        with tempfile.TemporaryDirectory() as d:
            dtype = torch.float32 if name in FLOAT32_VARIANTS else torch.float64
            got = run_variant(name, Path(d) / name, dtype)
            del got["weights_sha256"]  # exact bytes: not portable, compared within one machine
            data[name] = {"flags": VARIANTS[name], "dtype": str(dtype)[6:], **got}
        print("pinned", name, flush=True)
    data = {k: data[k] for k in VARIANTS if k in data}
    PINNED.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
