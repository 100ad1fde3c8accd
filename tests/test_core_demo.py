"""The core's reproduce stage on a tiny configuration: valid run directories and counts."""

import math

from analysis.core_demo import DemoConfig, run_one
from suite.rundir import load_run


def test_demo_runs_write_valid_runs_and_count_passes(tmp_path):
    out = {}
    for opt in ("sgd", "sam", "looksam"):
        cfg = DemoConfig(optimizer=opt, epochs=1, frac_train=0.4, width=32, hessian_examples=64)
        run_one(cfg, tmp_path / opt)
        out[opt] = load_run(tmp_path / opt)
    assert out["sgd"]["summary"]["passes_per_step"] == 1.0
    assert out["sam"]["summary"]["passes_per_step"] == 2.0
    steps = out["sam"]["metrics"][-1]["passes"] // 2
    # LookSAM: the second pass on steps 0, 5, 10, ... only
    assert out["looksam"]["metrics"][-1]["passes"] == steps + (steps + 4) // 5
    for r in out.values():
        assert r["config"]["config"]["epochs"] == 1
        assert 0.0 <= r["summary"]["test_acc"] <= 1.0
        assert math.isfinite(r["summary"]["lambda_max"])  # largest |eigenvalue|; any sign early
