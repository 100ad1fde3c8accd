"""The pinned small runs (tests/deep_pinned): every SAM variant of the deep-net trainer reproduces
its recorded metrics and final weights, on any CPU.

The runs are made in float64 (torch's default dtype set for the run: data, model and every
computation of the trainer follow it). In float32 a few epochs of these tiny, near-chance models
amplify one rounding difference (another CPU's kernels, another thread count) to 1e-4 in the
weights and a flipped evaluation example in the errors (4.8% of now_bn_every's train_err after a
1-ulp change of the initial weights); in float64 the same change moves every pinned number by
<= 4e-16 relative. The tolerance REL sits between: 1e5 x above float64 round-off and far below any
change of behaviour (a planted fault moves the metrics by >= 1e-4 relative). Error rates are
pinned exactly: a flip needs a margin below float64 round-off. The half-precision variant runs in
float32 (autocast ignores float64) with a tolerance for its float16 rounding, and its GradScaler
state is pinned exactly. Bit-for-bit determinism is checked within this machine: the same run
twice in one process.

An intended change of behaviour regenerates the affected entries
(``python -m tests.deep_pinned.make NAME``) and the commit names them.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from tests.deep_pinned.variants import FLOAT32_VARIANTS, VARIANTS, run_variant

PINNED = json.loads((Path(__file__).parent / "deep_pinned" / "pinned.json").read_text())
REL = 1e-10  # float64 runs: round-off moves them by <= 4e-16 relative (measured)
EXACT = {"lr", "rho", "sharpness_rho"}  # Python-float schedules: exact anywhere
REL_HALF = 2e-3  # the float16-autocast run (float32): 1-ulp changes move it by <= 2e-4


def assert_close_rows(got: list[dict], want: list[dict], rel: float) -> None:
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        # fields added later are not part of the pin
        g = {k: g.get(k, "<missing>") for k in w}
        for k, v in w.items():
            if isinstance(v, float) and not k.endswith("_err") and k not in EXACT:
                ok = isinstance(g[k], float) and math.isclose(g[k], v, rel_tol=rel, abs_tol=rel)
                assert ok, f"row {i} {k}: {g[k]!r} != pinned {v!r} (rel {rel})"
            else:  # integers, flags, error rates (counts / n) and the schedule: exact
                assert g[k] == v, f"row {i} {k}: {g[k]!r} != pinned {v!r}"


def test_every_variant_is_pinned():
    assert sorted(PINNED) == sorted(VARIANTS)


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_pinned_run_reproduces(name, tmp_path):
    want = PINNED[name]
    assert want["flags"] == VARIANTS[name], "the variant's flags changed: regenerate its entry"
    half = name in FLOAT32_VARIANTS
    assert want["dtype"] == ("float32" if half else "float64")
    got = run_variant(name, tmp_path / name, torch.float32 if half else torch.float64)
    rel = REL_HALF if half else REL
    assert_close_rows(got["rows"], want["rows"], rel)
    norm = want["weights"][0]
    for g, w in zip(got["weights"], want["weights"], strict=True):
        assert abs(g - w) <= rel * norm, f"final weights moved: {got['weights']} vs {w}"
    assert got["int_buffers"] == want["int_buffers"]
    assert got["scaler"] == want["scaler"]


@pytest.mark.parametrize("name", ["msam", "bn_msam", "now_fp16"])
def test_same_run_twice_is_bit_identical(name, tmp_path):
    """In the users' float32 (and the half-precision run), on one machine, a run is exactly
    reproducible: the same metrics and the same weight bytes."""
    a = run_variant(name, tmp_path / "a", torch.float32)
    b = run_variant(name, tmp_path / "b", torch.float32)
    assert a["rows"] == b["rows"]
    assert a["weights_sha256"] == b["weights_sha256"]
