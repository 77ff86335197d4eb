#!/usr/bin/env bash
# Reproduce the shipped demo model (mrcnet/assets/demo/) with the project's own commands:
#   3 procedural objects -> synthetic BOP scenes (train_pbr + a held-out test split) and the demo
#   clip -> mrcnet-train (small preset) -> mrcnet/assets/demo/ (model.pth, float16, 11 MB; the
#   clip, its ground truth and detections; the meshes). The shipped model's runs (a first run and
#   fine-tuning runs with INIT=) are listed in mrcnet/assets/demo/MODEL_CARD.md.
#
# Settings (environment variables, defaults in brackets):
#   OUT [runs/demo]   run folder (data under $OUT/data, training under $OUT/train)
#   EPOCHS [11]  BATCH [16]  WORKERS [1]  LR [5e-4]  WARMUP [300]
#   DEVICE []         '' = cuda:0 when available, else cpu
#   NPROC [1]         >1: one process per GPU through torchrun (BATCH is per process)
#   INIT []           start from this checkpoint's weights (--init: a new schedule) instead of scratch
# Re-running continues where it stopped: scenes resume, training uses --resume when a checkpoint exists.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/demo}
EPOCHS=${EPOCHS:-11}
BATCH=${BATCH:-16}
WORKERS=${WORKERS:-1}
LR=${LR:-5e-4}
WARMUP=${WARMUP:-300}
DEVICE=${DEVICE:-}
NPROC=${NPROC:-1}
INIT=${INIT:-}
BIN=.venv/bin
DATA=$OUT/data

# 1. objects: a bracket (no symmetry), a bushing (continuous + discrete), a plate with holes (discrete)
[ -f "$DATA/models/models_info.json" ] || $BIN/mrcnet-synth objects --count 3 --seed 0 --out "$DATA"
# 2. scenes: training split, a held-out split (another seed, same objects) and the demo clip; the
#    'table' layout (objects resting on a table, camera from above) is the demo clip's setting
$BIN/mrcnet-synth scenes --models "$DATA/models" --out "$DATA" --split train_pbr --count 2400 --seed 1 --objects-per-image 2 5 --layout table
$BIN/mrcnet-synth scenes --models "$DATA/models" --out "$DATA" --split test --count 60 --seed 2 --objects-per-image 2 5 --layout table
[ -f "$DATA/clip/video.mp4" ] || $BIN/mrcnet-synth video --models "$DATA/models" --out "$DATA/clip" --count 90 --seed 3
# 3. training
ARGS=(--data "$DATA" --split train_pbr --preset small --dataset synth --object-ids 1,2,3
      --epochs "$EPOCHS" --batch-size "$BATCH" --workers "$WORKERS" --lr "$LR" --warmup "$WARMUP"
      --val-data "$DATA" --val-split test --val-max 100 --val-box-jitter 0.1 --ckpt-every 200 --out "$OUT/train")
[ -n "$DEVICE" ] && ARGS+=(--device "$DEVICE")
if [ -f "$OUT/train/last.pth" ]; then ARGS+=(--resume); elif [ -n "$INIT" ]; then ARGS+=(--init "$INIT"); fi
if [ "$NPROC" -gt 1 ]; then
    $BIN/torchrun --standalone --nproc_per_node "$NPROC" -m mrcnet.train.cli "${ARGS[@]}"
else
    $BIN/mrcnet-train "${ARGS[@]}"
fi
# 4. ship the weights (project format, official 'network' key, float16 without training state),
#    the demo clip with its ground truth and detections, and the meshes
mkdir -p mrcnet/assets/demo/models
cp "$DATA"/clip/{video.mp4,camera.json,scene_camera.json,scene_gt.json,scene_gt_info.json,detections.json} mrcnet/assets/demo/
cp "$DATA"/models/{models_info.json,obj_*.ply} mrcnet/assets/demo/models/
CKPT="$OUT/train/model.pth"; [ -f "$CKPT" ] || CKPT="$OUT/train/last.pth"
$BIN/python -c "import sys; from mrcnet.checkpoint import slim_checkpoint; slim_checkpoint(sys.argv[1], sys.argv[2])" \
    "$CKPT" mrcnet/assets/demo/model.pth
LAST_VAL=$(ls "$OUT"/train/val_epoch_*.json | sort | tail -n 1)
cp "$LAST_VAL" mrcnet/assets/demo/validation.json
echo "demo model: mrcnet/assets/demo/model.pth; validation: $LAST_VAL; curves: $OUT/train/loss_curves.png"
