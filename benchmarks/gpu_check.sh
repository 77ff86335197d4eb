#!/usr/bin/env bash
# The GPU check, ready to run on a bare Linux x86-64 GPU machine: Python 3.12 and PyTorch with CUDA,
# no network, none of the project's other dependencies. Prepare .gpu-check/ beforehand on a machine
# with network (bash scripts/prepare_gpu_check.sh), copy the repository, then:
#
#   bash benchmarks/gpu_check.sh [--out out/gpu_check] [--skip-gpu] [--frames 30] [--only STEP,...]
#
# It sets up the offline packages (benchmarks/gpu_env.sh: wheels, EGL .debs, NVIDIA's EGL vendor
# file, the source tree on PYTHONPATH) and runs benchmarks/gpu_check.py (see there for the steps).
# Without .gpu-check/ it runs in the repository's .venv (as here, on the CPU: the GPU parts are
# skipped and the report says so). Writes OUT/gpu_check.json and OUT/gpu_check.md.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
# shellcheck source=benchmarks/gpu_env.sh
source "$ROOT/benchmarks/gpu_env.sh"
exec "$PY" "$ROOT/benchmarks/gpu_check.py" "$@"
