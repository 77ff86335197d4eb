#!/usr/bin/env bash
# Set up (idempotent) and run the main job on the embedded default: the shipped demo model on the
# shipped demo clip. The demo checkpoint is exported to ONNX once (mrcnet-export's default output,
# ~/.cache/mrcnet-edge/demo-export or $MRCNET_DEMO_EXPORT); mrcnet-run --demo then writes
# out/demo/poses.jsonl and out/demo/overlay.mp4 (extra arguments go to mrcnet-run).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# export once, and again when the shipped demo model changed (a stale export is refused by mrcnet-run)
if ! .venv/bin/python -c 'import sys; from mrcnet.runtime.manifest import demo_export_problem; sys.exit(demo_export_problem() is not None)'; then
  .venv/bin/mrcnet-export
fi
exec .venv/bin/mrcnet-run --demo --out out/demo --overwrite "$@"
