#!/usr/bin/env bash
# Set up (idempotent) and run the main job on the embedded default: the shipped demo model on the
# shipped demo clip. The demo checkpoint is exported to ONNX once (mrcnet-export's default output,
# ~/.cache/mrcnet-edge/demo-export or $MRCNET_DEMO_EXPORT); mrcnet-run --demo then writes
# out/demo/poses.jsonl and out/demo/overlay.mp4 (extra arguments go to mrcnet-run).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
EXPORT_DIR=$(.venv/bin/python -c 'from mrcnet.runtime.manifest import DEMO_EXPORT_DIR; print(DEMO_EXPORT_DIR)')
if [ ! -f "$EXPORT_DIR/manifest.json" ]; then
  .venv/bin/mrcnet-export
fi
exec .venv/bin/mrcnet-run --demo --out out/demo "$@"
