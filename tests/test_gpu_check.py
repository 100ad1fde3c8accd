"""benchmarks/gpu_check.sh end to end on the CPU at tiny sizes (so the GPU check cannot rot)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_check_runs_end_to_end_on_cpu():
    proc = subprocess.run(
        [str(ROOT / "benchmarks" / "gpu_check.sh"), "--device", "cpu", "--tiny"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1500,
        env=dict(os.environ, GPU_CHECK_TIMEOUT="1400"),
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    for name in ("fig1", "finetune", "noisy", "m_sharpness", "looksam"):
        assert f"| {name} |" in out, out[-2000:]
    for kind in ("sgd", "sam", "looksam", "msam_loop", "msam_vectorized"):
        assert kind in out
    assert "trainer epoch" in out and "passed" in out
