"""The core benchmark's measurement and report code on tiny configurations (no timing claims)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from benchmarks import bench_core as bc

ALL = ["sgd", "sam", "looksam", "msam", "peer_sam", "peer_sam_foreach", "peer_looksam"]


def _tiny() -> bc.Workload:
    w = bc.mlp_workload(depth=3, dim=4, batch=8)
    return dataclasses.replace(w, warmup=1, min_rounds=2, max_rounds=2, budget_s=0.0)


def _rows(text: list[str]) -> list[list[str]]:
    return [ln.strip("|").split("|") for ln in text if ln.startswith("|")]


def test_timing_table_is_well_formed() -> None:
    w = _tiny()
    res = bc.measure_times(w, ALL, verbose=False)
    assert res.rounds == 2
    # block = K steps per round, every step of every contender recorded
    assert all(len(res.step_s[n]) == 2 * w.block for n in res.names)
    assert all(res.loss_finite.values())
    rows = _rows(bc.timing_table(res, res.names[0], bc.PEER_SAM_NAME))
    assert len(rows) == 2 + len(ALL)  # header, separator, one row per contender
    assert {len(r) for r in rows} == {7}
    for r, name in zip(rows[2:], res.names):
        assert r[0].strip() == name
        med = float(r[2])
        assert math.isfinite(med) and med > 0
        lo, hi = (float(v) for v in r[3].split("-"))
        assert lo <= med <= hi
    # ratios against itself are exactly one
    assert res.ratio(res.names[0], res.names[0]) == 1.0
    assert res.paired_ratio(bc.PEER_SAM_NAME, bc.PEER_SAM_NAME)[1] == 1.0


def test_looksam_samples_cover_whole_periods() -> None:
    # block 1 < k: LookSAM's samples are sliding means over k steps, the others per step.
    w = dataclasses.replace(_tiny(), block=1, min_rounds=bc.K + 1, max_rounds=bc.K + 1)
    res = bc.measure_times(w, ["sgd", "looksam"], verbose=False)
    assert res.window(bc.LOOKSAM_NAME) == bc.K and res.window(res.names[0]) == 1
    assert len(res.samples(res.names[0])) == bc.K + 1
    s = res.step_s[bc.LOOKSAM_NAME]
    assert res.samples(bc.LOOKSAM_NAME) == pytest.approx(
        [sum(s[i : i + bc.K]) / bc.K for i in range(2)]
    )


def test_state_bytes_counts_momentum_and_sam_buffers() -> None:
    # Independent expectations: SGD's momentum is one copy of the parameters, our SAM adds one
    # preallocated backup copy, LookSAM another for g_v; the peer's SAM frees its copy.
    torch.manual_seed(0)
    model = _tiny().build()
    pb = bc.param_bytes(model)
    assert pb == 4 * sum(p.numel() for p in model.parameters())
    x, y = bc._batch(_tiny(), torch.device("cpu"))
    got = {}
    for c in bc.make_contenders(model, 8, ["sgd", "sam", "looksam", "peer_sam"]):
        c.step(x, y)
        got[c.name] = bc.state_bytes(c.optimizer)
    assert got == {
        "SGD (torch, momentum 0.9)": pb,
        bc.SAM_NAME: 2 * pb,
        bc.LOOKSAM_NAME: 3 * pb,
        bc.PEER_SAM_NAME: pb,
    }


def test_memory_and_targets_tables() -> None:
    w = _tiny()
    rows = bc.measure_memory(w, ["sgd", "sam", "peer_sam"], cuda=False)
    pb = rows[0].param_bytes
    assert [r.name for r in rows] == ["SGD (torch, momentum 0.9)", bc.SAM_NAME, bc.PEER_SAM_NAME]
    # The profiler saw the step's allocations (activations and gradients at least).
    assert all(r.step_peak_bytes >= pb for r in rows)
    # The peer clones the weights inside first_step: its optimizer-call peak holds that copy.
    assert rows[2].opt_peak_bytes >= pb
    table = bc.memory_table(rows)
    assert {len(r) for r in _rows(table)} == {6}
    res = bc.measure_times(w, ["sgd", "sam", "looksam", "peer_sam"], verbose=False)
    tt = bc.targets_table(res, res, {"b": rows})
    verdicts = [r[-1].strip() for r in _rows(tt)[2:]]
    assert len(verdicts) == 5
    assert all(v.split(" (")[0] in ("pass", "FAIL") for v in verdicts[:4]), verdicts
    assert verdicts[4] == "(peer, no target)"
