#!/usr/bin/env bash
# Reproduce the demo model (issue 5 item 4) with the project's own commands:
#   3 procedural objects -> synthetic BOP scenes (train + held-out val) -> mrcnet-train (small preset)
#   -> mrcnet/assets/demo/model.pth (+ the run's validation numbers for the model card).
#
# Settings (environment variables, defaults in brackets):
#   OUT [runs/demo]        run folder (data under $OUT/data, training under $OUT/train)
#   TRAIN_IMAGES [2000]    training images (3-6 objects each: ~9000 instances)
#   VAL_IMAGES [100]       held-out images (another seed)
#   EPOCHS [20]  BATCH [16]  WORKERS [4]  WARMUP [500]
#   DEVICE []              '' = cuda:0 when available, else cpu; the renderer follows it
#   NPROC [1]              >1: one process per GPU through torchrun (BATCH is per process)
#   SEED [0]
# Re-running continues where it stopped: scenes resume, training uses --resume when a checkpoint exists.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/demo}
TRAIN_IMAGES=${TRAIN_IMAGES:-2000}
VAL_IMAGES=${VAL_IMAGES:-100}
EPOCHS=${EPOCHS:-20}
BATCH=${BATCH:-16}
WORKERS=${WORKERS:-4}
WARMUP=${WARMUP:-500}
DEVICE=${DEVICE:-}
NPROC=${NPROC:-1}
SEED=${SEED:-0}
BIN=.venv/bin
DATA=$OUT/data

# 1. objects (T-LESS-like parts: no symmetry, continuous + discrete, discrete group)
[ -f "$DATA/train/models/models_info.json" ] || $BIN/mrcnet-synth objects --count 3 --seed "$SEED" --out "$DATA/train"
# 2. scenes: training split and a held-out split with another seed, same objects
$BIN/mrcnet-synth scenes --models "$DATA/train/models" --out "$DATA/train" --split train_pbr \
    --images "$TRAIN_IMAGES" --seed "$SEED"
$BIN/mrcnet-synth scenes --models "$DATA/train/models" --out "$DATA/val" --split test \
    --images "$VAL_IMAGES" --seed $((SEED + 1000))
# 3. training
ARGS=(--data "$DATA/train" --split train_pbr --preset small --dataset synth --objects 1,2,3
      --epochs "$EPOCHS" --batch-size "$BATCH" --warmup "$WARMUP" --workers "$WORKERS" --seed "$SEED"
      --val-data "$DATA/val" --val-split test --val-max 300 --out "$OUT/train")
[ -n "$DEVICE" ] && ARGS+=(--device "$DEVICE")
[ -f "$OUT/train/last.pth" ] && ARGS+=(--resume)
if [ "$NPROC" -gt 1 ]; then
    $BIN/torchrun --standalone --nproc_per_node "$NPROC" -m mrcnet.train.cli "${ARGS[@]}"
else
    $BIN/mrcnet-train "${ARGS[@]}"
fi
# 4. ship the weights (project format, official 'network' key; ~5 MB for the small preset)
mkdir -p mrcnet/assets/demo
cp "$OUT/train/model.pth" mrcnet/assets/demo/.model.pth.tmp
mv mrcnet/assets/demo/.model.pth.tmp mrcnet/assets/demo/model.pth
LAST_VAL=$(ls "$OUT"/train/val_epoch_*.json | sort | tail -n 1)
cp "$LAST_VAL" mrcnet/assets/demo/validation.json
echo "demo model: mrcnet/assets/demo/model.pth; validation: $LAST_VAL; curves: $OUT/train/loss_curves.png"
