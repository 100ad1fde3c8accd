#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py): device tests, ResNet-18 step timings, one trainer
# epoch, and the paper profile's GPU-hours. Usage: benchmarks/gpu_check.sh [--device cpu --tiny]
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
exec timeout 480 "$PY" -m benchmarks.gpu_check "$@"
