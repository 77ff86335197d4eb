#!/usr/bin/env bash
# Set up (idempotent) and run the main job on the embedded default: the shipped demo model on the
# demo clip. Writes out/demo/poses.jsonl and out/demo/overlay.mp4.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/mrcnet-run --demo --out out/demo "$@"
