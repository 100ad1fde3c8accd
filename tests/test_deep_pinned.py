"""The exact metrics of the pinned small runs (tests/deep_pinned): every SAM variant of the deep-net
trainer reproduces them bit for bit. A refactor must not change a single number; an intended change
of behaviour regenerates the affected entries (``python -m tests.deep_pinned.make NAME``) and the
commit names them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.deep_pinned.variants import VARIANTS, run_variant

PINNED = json.loads((Path(__file__).parent / "deep_pinned" / "pinned.json").read_text())


def test_every_variant_is_pinned():
    assert sorted(PINNED) == sorted(VARIANTS)


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_pinned_run_reproduces_bit_for_bit(name, tmp_path):
    want = PINNED[name]
    assert want["flags"] == VARIANTS[name], "the variant's flags changed: regenerate its entry"
    got = run_variant(name, tmp_path / name)
    assert len(got["rows"]) == len(want["rows"])
    for g, w in zip(got["rows"], want["rows"], strict=True):
        # Every pinned field is reproduced exactly (floats compared as Python floats: bit for bit);
        # fields added later are not part of the pin.
        assert {k: g.get(k, "<missing>") for k in w} == w
    assert got["weights_sha256"] == want["weights_sha256"]
