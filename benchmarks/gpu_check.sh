#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py): device tests, ResNet-18 step timings, one trainer
# epoch, and the paper profile's GPU-hours. Usage: benchmarks/gpu_check.sh [--device cpu --tiny]
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
# 8 minutes on a GPU; the CPU check (--tiny, tests/test_gpu_check.py) may take longer on a busy CPU
exec timeout "${GPU_CHECK_TIMEOUT:-480}" "$PY" -m benchmarks.gpu_check "$@"
